"""gitroot boot-select: the boot path's choice (consumes a trial's try).

Prints the commit to mount.  Run once per boot by the initramfs, before the
root is mounted; records the choice in /run/gitroot/booted.
"""

import argparse
import time

from gitroot.device import add_device_arguments, device_from_args
from gitroot.state import choose_boot, record_booted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="say what would boot; consume nothing")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    store = device.store(with_repo=False)
    with store.locked():
        state = store.load()
        choice = choose_boot(state, device.boot.update_revision, time.time())
        if not args.dry_run:
            if choice.state != state:
                action = "abandon" if choice.state.abandoned != state.abandoned else "try"
                store.save(choice.state, action, "boot", choice.commit, choice.detail)
            record_booted(choice)
    print(choice.commit)
    return 0
