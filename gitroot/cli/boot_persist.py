"""gitroot boot-persist: set up what the device keeps (the initramfs, before switch_root).

Run by the boot script once the release is mounted and the root overlay is
on the new root: applies a requested factory reset, merges /etc for the
booted release, puts the device's machine-id in place, leaves
``migrations-none-due`` in the run directory when there is certainly no
data migration to run (gitroot-migrate.service is then skipped), and prints
the mounts to make, one a line (``bind SOURCE TARGET`` or ``overlay LOWER
TARGET UPPER WORK``).  What the console should show goes to stderr.

With ``--repo`` (the boot script gives it), a release's /etc is read from
the repository on its first boot (gitroot.serve.export), not copied
through the mount: the same entries without a FUSE round trip for each.

Imports only the standard library and gitroot.boot (it runs in the
initramfs); the repository's reader, with pygit2, is imported only when an
/etc is to be built (``gitroot boot-helper`` has it loaded by then).
"""

import argparse
import os
import sys
from typing import Optional

from gitroot.boot.cmdline import read_cmdline
from gitroot.boot.persist import NOTHING_TO_MIGRATE, Layout, PublishEtc, prepare_boot
from gitroot.boot.state import booted_commit, run_dir
from gitroot.errors import PersistError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--persist-dir", required=True,
                        help="the persistence directory on the medium")
    parser.add_argument("--lower", required=True, help="where the booted release is mounted")
    parser.add_argument("--root", required=True, help="the new root (the writable overlay)")
    parser.add_argument("--commit", help="the booted release (default: as boot-select "
                        "recorded it)")
    parser.add_argument("--repo", help="the repository the release is mounted from: its "
                        "/etc is read from there (default: copied through --lower)")


def run(args: argparse.Namespace) -> int:
    commit = args.commit or booted_commit()
    if not commit:
        raise UsageError("which release is booted? (no --commit and no record from boot-select)")
    try:
        plan = prepare_boot(Layout(args.persist_dir), commit, args.lower, args.root,
                            read_cmdline().options,
                            _etc_from_repository(args.repo, commit) if args.repo else None)
    except OSError as err:
        raise PersistError(f"{args.persist_dir}: {err.strerror} "
                           f"({err.filename or 'the persistence directory'})") from None
    for message in plan.messages:
        print(f"gitroot: {message}", file=sys.stderr)
    for mount in plan.mounts:
        print(mount.line())
    _tell_migrate_service(plan.nothing_to_migrate)
    return 0


def _etc_from_repository(repo: str, commit: str) -> Optional[PublishEtc]:
    """What writes *commit*'s /etc from *repo*; None (the copy through the
    mount) where the reader cannot be imported."""
    try:
        from gitroot.serve.export import write_directory
    except ImportError:
        return None
    return lambda out: write_directory(repo, commit, b"etc", out)


def _tell_migrate_service(nothing_due: bool) -> None:
    """``RUN_DIR/migrations-none-due`` skips gitroot-migrate.service (its
    ConditionPathExists=!); any doubt leaves the service to run."""
    path = os.path.join(run_dir(), NOTHING_TO_MIGRATE)
    try:
        if nothing_due:
            os.makedirs(run_dir(), exist_ok=True)
            with open(path, "w"):
                pass
        else:
            os.unlink(path)
    except OSError:
        pass
