"""gitroot boot-select: the boot path's choice (consumes a trial's try).

Prints the commit to mount.  Run once per boot by the initramfs, before the
root is mounted; records the choice in /run/gitroot/booted.

On the boot path (``--state-dir`` given) it imports only the command line
parser and the state module: no configuration file, so no PyYAML.
"""

import argparse
import time

from gitroot.boot.cmdline import read_cmdline
from gitroot.cli.device_args import add_device_arguments
from gitroot.boot.state import StateStore, choose_boot, record_booted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="say what would boot; consume nothing")


def run(args: argparse.Namespace) -> int:
    if args.state_dir:
        state_dir, boot = args.state_dir, read_cmdline()
    else:
        from gitroot.device.context import device_from_args
        device = device_from_args(args)
        state_dir, boot = device.state_dir, device.boot
    store = StateStore(state_dir)
    with store.locked():
        state = store.load()
        choice = choose_boot(state, boot.update_revision, time.time(), boot.commit)
        if not args.dry_run:
            if choice.state != state:
                if choice.state.abandoned != state.abandoned:
                    # the entry names the release given up, not the one booted instead
                    store.save(choice.state, "abandon", "boot", choice.state.abandoned.commit,
                               choice.detail)
                else:
                    store.save(choice.state, "try", "boot", choice.commit, choice.detail)
            record_booted(choice)
    print(choice.commit)
    return 0
