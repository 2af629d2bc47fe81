"""gitroot pin REV | gitroot pin --release: choose the next boot's release by hand."""

import argparse
import time

from gitroot.boot.transitions import release_hold, schedule_trial
from gitroot.cli.device_args import add_device_arguments, who
from gitroot.device.bootloader import sync_device
from gitroot.device.context import device_from_args
from gitroot.errors import UsageError
from gitroot.git.repository import resolve_commit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("rev", nargs="?", metavar="REV")
    parser.add_argument("--release", action="store_true",
                        help="drop the hold, so fetches schedule new releases again")
    parser.add_argument("--tries", type=int, help="boot attempts before falling back")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    with device.changing_state() as (store, state, _problem):
        if args.release:
            store.save(release_hold(state), "release", who(), None,
                       "upgrades resumed")
            sync_device(device, release_hold(state))
            print("upgrades resumed")
            return 0
        if not args.rev:
            raise UsageError("give REV to pin, or --release")
        commit = str(resolve_commit(device.repo, args.rev).id)
        from gitroot.serve.vfs import RootView
        RootView(device.repo, commit)       # refuse what cannot be mounted
        tries = args.tries or device.config.tries
        new = schedule_trial(state, commit, tries, hold=True, now=time.time())
        store.save(new, "pin", who(), commit, f"pinned {args.rev} by hand; upgrades held")
        sync_device(device, new)
    print(f"pinned {commit[:12]} for the next boot ({tries} tries, then back to the last "
          "good release); upgrades held until 'gitroot pin --release'")
    return 0
