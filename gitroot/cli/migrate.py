"""gitroot migrate: revert and apply the booted release's data migrations.

Run once per boot by gitroot-migrate.service, after switch_root and before
the system's services start (docs/operations.md, "Data migrations").
"""

import argparse

from gitroot.boot.state import booted_commit
from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args
from gitroot.device.migrate import MigrationError, require_signed, run_migrations
from gitroot.device.persistence import layout_for
from gitroot.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--root", default="/", help="the booted release's root (default /)")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    release = booted_commit()
    if not release:
        raise UsageError("which release is booted? (no record from the boot path)")
    result = run_migrations(layout_for(device.state_dir), args.root, release,
                            lambda: require_signed(device, release),
                            log=lambda line: print(f"migrate: {line}", flush=True))
    if result.output:
        print(result.output.rstrip())
    if result.result in ("failed", "refused"):
        raise MigrationError(f"migrations {result.result}: {result.message}; "
                             f"release {release[:12]} will not be marked good")
    print(f"migrations: {', '.join(result.ran) or 'nothing to do'}")
    return 0
