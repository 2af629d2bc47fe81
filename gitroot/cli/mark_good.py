"""gitroot mark-good: the booted trial becomes the last good release."""

import argparse

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args
from gitroot.boot.state import booted_commit
from gitroot.boot.transitions import mark_good
from gitroot.device.bootloader import abandon_if_loader_gave_up, sync_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--booted", metavar="COMMIT",
                        help="the booted release (default: as the boot path recorded it)")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    with device.changing_state() as (store, state, problem):
        booted = args.booted or booted_commit()
        cfg = device.config
        state = abandon_if_loader_gave_up(store, state, cfg.bootloader.type, cfg.boot_dir,
                                          booted, "mark-good")
        if booted and booted == booted_commit():
            _refuse_if_migrations_failed(device, booted)
        new = mark_good(state, booted)
        if new == state and problem is None:
            sync_device(device, new)
            print(f"{booted[:12]} is already the last good release")
            return 0
        store.save(new, "good", "mark-good", booted, "booted trial marked good")
        sync_device(device, new)
    print(f"{booted[:12]} is now the last good release")
    return 0


def _refuse_if_migrations_failed(device, booted: str) -> None:
    """A release whose data migrations failed or never ran is not good."""
    from gitroot.device.migrate import MigrationError, blocks_mark_good
    from gitroot.device.persistence import layout_for
    reason = blocks_mark_good(layout_for(device.state_dir), "/", booted)
    if reason:
        raise MigrationError(f"not marking {booted[:12]} good: {reason}")
