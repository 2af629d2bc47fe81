"""gitroot boot-persist: set up what the device keeps (the initramfs, before switch_root).

Run by the boot script once the release is mounted and the root overlay is
on the new root: applies a requested factory reset, merges /etc for the
booted release, puts the device's machine-id in place, leaves
``migrations-none-due`` in the run directory when there is certainly no
data migration to run (gitroot-migrate.service is then skipped), and prints
the mounts to make, one a line (``bind SOURCE TARGET`` or ``overlay LOWER
TARGET UPPER WORK``).  What the console should show goes to stderr.

Imports only the standard library and gitroot.boot (it runs in the initramfs).
"""

import argparse
import os
import sys

from gitroot.boot.cmdline import read_cmdline
from gitroot.boot.persist import NOTHING_TO_MIGRATE, Layout, prepare_boot
from gitroot.boot.state import booted_commit, run_dir
from gitroot.errors import PersistError, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--persist-dir", required=True,
                        help="the persistence directory on the medium")
    parser.add_argument("--lower", required=True, help="where the booted release is mounted")
    parser.add_argument("--root", required=True, help="the new root (the writable overlay)")
    parser.add_argument("--commit", help="the booted release (default: as boot-select "
                        "recorded it)")


def run(args: argparse.Namespace) -> int:
    commit = args.commit or booted_commit()
    if not commit:
        raise UsageError("which release is booted? (no --commit and no record from boot-select)")
    try:
        plan = prepare_boot(Layout(args.persist_dir), commit, args.lower, args.root,
                            read_cmdline().options)
    except OSError as err:
        raise PersistError(f"{args.persist_dir}: {err.strerror} "
                           f"({err.filename or 'the persistence directory'})") from None
    for message in plan.messages:
        print(f"gitroot: {message}", file=sys.stderr)
    for mount in plan.mounts:
        print(mount.line())
    _tell_migrate_service(plan.nothing_to_migrate)
    return 0


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
