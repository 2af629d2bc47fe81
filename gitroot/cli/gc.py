"""gitroot gc --keep N: prune old releases (see gitroot.device.gc)."""

import argparse

from gitroot.cli.device_args import add_device_arguments
from gitroot.boot.persist import prune_etc
from gitroot.device.context import device_from_args
from gitroot.device.gc import collect_garbage
from gitroot.device.persistence import layout_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--keep", type=int, required=True, metavar="N",
                        help="also keep the N newest pinned releases")
    parser.add_argument("--booted", metavar="COMMIT",
                        help="the booted release (default: as the boot path recorded it in "
                        "/run/gitroot/booted; without either, gc refuses to run)")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    store = device.store()
    from gitroot.boot.state import FETCH_LOCK_FILE
    # A running fetch's new pack has no ref yet: gc must not prune it.
    with store.locked(blocking=False, name=FETCH_LOCK_FILE), store.locked():
        kept = collect_garbage(store, device.repo, args.keep, args.booted)
        dropped = prune_etc(layout_for(device.state_dir), set(kept.commits))
    print(f"kept {len(kept.commits)} releases: " + ", ".join(
        f"{c[:12]} ({', '.join(kept.reasons[c])})" for c in kept.commits))
    if dropped:
        print(f"dropped the kept /etc of {len(dropped)} pruned releases")
    return 0
