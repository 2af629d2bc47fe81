"""gitroot pin REV | gitroot pin --release: choose the next boot's release by hand."""

import argparse
import logging
import time

from gitroot.boot.transitions import release_hold, schedule_trial
from gitroot.cli.device_args import add_device_arguments, who
from gitroot.device.context import device_from_args
from gitroot.errors import UsageError
from gitroot.git.repository import resolve_commit

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("rev", nargs="?", metavar="REV")
    parser.add_argument("--release", action="store_true",
                        help="drop the hold, so fetches schedule new releases again")
    parser.add_argument("--tries", type=int, help="boot attempts before falling back")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    store = device.store()
    with store.locked():
        state, problem = store.load_or_recover()
        if problem is not None:     # saving below rewrites the file
            log.warning("%s; rebuilt from refs/gitroot/*", problem)
        if args.release:
            store.save(release_hold(state), "release", who(), None,
                       "upgrades resumed")
            print("upgrades resumed")
            return 0
        if not args.rev:
            raise UsageError("give REV to pin, or --release")
        commit = str(resolve_commit(device.repo, args.rev).id)
        from gitroot.serve.vfs import RootView
        RootView(device.repo, commit)       # refuse what cannot be mounted
        tries = args.tries or device.config.tries
        store.save(schedule_trial(state, commit, tries, hold=True, now=time.time()), "pin", who(), commit,
                   f"pinned {args.rev} by hand; upgrades held")
    print(f"pinned {commit[:12]} for the next boot ({tries} tries, then back to the last "
          "good release); upgrades held until 'gitroot pin --release'")
    return 0
