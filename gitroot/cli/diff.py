"""gitroot diff [--stat] [REV]: what an update changes."""

import argparse
import os

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args
from gitroot.errors import UsageError
from gitroot.boot.state import booted_commit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("rev", nargs="?", metavar="REV",
                        help="the release to compare (default: the trial)")
    parser.add_argument("--from", dest="base", metavar="BASE",
                        help="compare against this (default: the booted or last good release)")
    parser.add_argument("--stat", action="store_true", help="only the totals")


def run(args: argparse.Namespace) -> int:
    from gitroot.device.diff import diff_commits
    device = device_from_args(args)
    state = device.store(with_repo=False).load()
    new = args.rev or (state.trial.commit if state.trial else None)
    base = args.base or booted_commit() or state.last_good
    if new is None or base is None:
        raise UsageError("nothing to compare: give REV (and --from BASE)")
    d = diff_commits(device.repo, base, new)
    if not args.stat:
        for c in d.changes:
            shown = "" if c.path == b"." else os.fsdecode(c.path)   # b"." is the root
            print(f"{c.status} /{shown}")
    print(f"{d.old[:12]}..{d.new[:12]}: {d.added} added, {d.changed} changed, "
          f"{d.removed} removed; {d.bytes} bytes")
    return 0
