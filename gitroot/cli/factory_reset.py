"""gitroot factory-reset --confirm: drop the device's /etc changes and persistent data.

The next boot, before anything is mounted, removes the persistence
directory's /etc copies, persistent paths and migration records; the
repository, the pins and the machine-id stay.
"""

import argparse

from gitroot.boot.persist import request_factory_reset
from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args
from gitroot.device.persistence import layout_for
from gitroot.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--confirm", action="store_true",
                        help="yes, drop every change this device made to /etc, /var, /home...")


def run(args: argparse.Namespace) -> int:
    if not args.confirm:
        raise UsageError("factory-reset drops the device's /etc changes and all persistent "
                         "data at the next boot; say --confirm")
    layout = layout_for(device_from_args(args).state_dir)
    request_factory_reset(layout)
    print(f"factory reset requested ({layout.factory_reset}): reboot to apply it")
    return 0
