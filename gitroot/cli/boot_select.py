"""gitroot boot-select: the boot path's choice (consumes a trial's try).

Prints the commit to mount and, with ``--with-reason``, the reason after it
on the same line (``trial``, ``last-good`` or ``debug-pin``: what the boot
script needs to decide whether a failed mount may fall back).  Run once per
boot by the initramfs, before the root is mounted; records the choice in
/run/gitroot/booted.

On the boot path (``--state-dir`` given) it imports only the command line
parser and the state modules: no configuration file, so no PyYAML.
"""

import argparse
import logging
import time

from gitroot.boot.cmdline import read_cmdline, warn_unknown
from gitroot.boot.state import StateStore, record_booted
from gitroot.boot.transitions import choose_boot
from gitroot.cli.device_args import add_device_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="say what would boot; consume nothing")
    parser.add_argument("--with-reason", action="store_true",
                        help="print 'COMMIT REASON' (for the boot script)")


def run(args: argparse.Namespace) -> int:
    if args.state_dir:
        state_dir, boot = args.state_dir, read_cmdline()
        warn_unknown(boot, logging.getLogger("gitroot.boot"))
    else:
        from gitroot.device.context import device_from_args
        device = device_from_args(args)
        state_dir, boot = device.state_dir, device.boot
    store = StateStore(state_dir)
    now = time.time()
    with store.locked():
        state = store.load()
        choice = choose_boot(state, boot.update_revision, now)
        if not args.dry_run:
            if choice.state != state:
                action = "abandon" if choice.state.abandoned != state.abandoned else "try"
                store.save(choice.state, action, "boot", choice.commit, choice.detail)
            record_booted(choice.commit, choice.reason, choice.detail, now)
    print(f"{choice.commit} {choice.reason}" if args.with_reason else choice.commit)
    return 0
