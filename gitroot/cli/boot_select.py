"""gitroot boot-select: the boot path's choice (consumes a trial's try).

Prints the commit to mount and, with ``--with-reason``, the reason after it
on the same line (``trial``, ``last-good``, ``previous-good``, ``fallback``
or ``debug-pin``: what the boot script needs to decide how a failed mount
falls back).  ``--unusable COMMIT`` (repeatable) names releases the boot
script already failed to mount; they are passed over like missing ones.
A state file that cannot be read is not fatal: the choice is made from the
refs (``StateStore.recover``), and the next state change rewrites it.  Run once per
boot by the initramfs, before the root is mounted; records the choice in
/run/gitroot/booted.

On the boot path (``--state-dir`` given) it imports only the command line
parser and the state modules: no configuration file, so no PyYAML.
"""

import argparse
import logging
import time

from gitroot.boot.cmdline import read_cmdline, warn_unknown
from gitroot.boot.state import StateStore, bootable, record_booted, releases_named_by_refs
from gitroot.boot.transitions import choose_boot
from gitroot.cli.device_args import add_device_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="say what would boot; consume nothing")
    parser.add_argument("--with-reason", action="store_true",
                        help="print 'COMMIT REASON' (for the boot script)")
    parser.add_argument("--unusable", action="append", default=[], metavar="COMMIT",
                        help="a release that failed to mount this boot: pass it over")


def run(args: argparse.Namespace) -> int:
    if args.state_dir:
        state_dir, boot, repository = args.state_dir, read_cmdline(), args.repository
        warn_unknown(boot, logging.getLogger("gitroot.boot"))
    else:
        from gitroot.device.context import device_from_args
        device = device_from_args(args)
        state_dir, boot, repository = device.state_dir, device.boot, device.repository
    repo = _open(repository)
    store = StateStore(state_dir, repo)
    now = time.time()
    unusable = set(args.unusable)
    with store.locked():
        state, problem = store.load_or_recover()
        if problem is not None:
            log.warning("%s; choosing from refs/gitroot/* instead", problem)
        usable = (lambda c: c not in unusable and bootable(repo, c)) if repo is not None \
            else (lambda c: c not in unusable)
        choice = choose_boot(state, boot.update_revision, now, usable,
                             releases_named_by_refs(repo) if repo is not None else ())
        if not args.dry_run:
            if choice.state != state:
                action = "abandon" if choice.state.abandoned != state.abandoned else "try"
                store.save(choice.state, action, "boot", choice.commit, choice.detail)
            record_booted(choice.commit, choice.reason, choice.detail, now)
    print(f"{choice.commit} {choice.reason}" if args.with_reason else choice.commit)
    return 0


def _open(path):
    """The repository, or None (with a warning): without it the state alone
    decides, as before there was a repository to check against."""
    if not path:
        return None
    from gitroot.errors import RepositoryError
    from gitroot.git.repository import open_repo
    try:
        return open_repo(path)
    except RepositoryError as err:
        log.warning("%s; cannot check that the release to boot is present", err)
        return None
