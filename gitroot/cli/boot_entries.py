"""gitroot boot-entries: write the boot loader's entries from the state.

Installs the kernel and initrd of every kept release where the boot loader
reads them and writes its entries (``bootloader`` in the configuration).
Every verb that changes the state does this itself; this verb is for
building a medium and for repairing one by hand.
"""

import argparse

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args, short
from gitroot.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--boot-dir", metavar="DIR",
                        help="where the boot loader reads (default: boot_dir of the config)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gitroot.boot.state import booted_commit
    from gitroot.device.bootloader import abandon_if_loader_gave_up, sync_device

    device = device_from_args(args)
    if args.boot_dir:
        device.config = replace(device.config, boot_dir=args.boot_dir)
    if device.config.bootloader.type == "none":
        raise UsageError(f"{device.config.path or 'the configuration'}: bootloader.type is "
                         "none: no boot loader entries to write")
    store = device.store()
    with store.locked():
        state = store.load()
        cfg = device.config
        state = abandon_if_loader_gave_up(store, state, cfg.bootloader.type, cfg.boot_dir,
                                          booted_commit(), "boot-entries")
        status = sync_device(device, state)
    for role, commit in status.entries.items():
        print(f"{role + ':':<15}{short(commit)}")
    print(f"{'default:':<15}{short(status.default)} ({status.default_role})")
    return 0
