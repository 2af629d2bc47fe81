"""gitroot gc --keep N: prune old releases (see gitroot.device.gc)."""

import argparse

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args
from gitroot.boot.persist import prune_etc
from gitroot.device.gc import collect_garbage
from gitroot.device.persistence import layout_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--keep", type=int, required=True, metavar="N",
                        help="also keep the N newest pinned releases")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    store = device.store()
    with store.locked():
        keep = collect_garbage(store, device.repo, args.keep)
        dropped = prune_etc(layout_for(device.state_dir), keep)
    print(f"kept {len(keep)} releases: " + ", ".join(sorted(c[:12] for c in keep)))
    if dropped:
        print(f"dropped the kept /etc of {len(dropped)} pruned releases")
    return 0
