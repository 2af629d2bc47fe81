"""gitroot commit SRC --repo REPO --branch BRANCH [-m MESSAGE]"""

import argparse
import logging
import time

from gitroot.importer import import_directory

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="root filesystem tree to import")
    parser.add_argument("--repo", required=True,
                        help="bare repository (created if missing)")
    parser.add_argument("--branch", required=True, help="branch to commit on")
    parser.add_argument("-m", "--message", default=None, help="commit message")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    message = args.message or f"gitroot commit of {args.source}"
    result = import_directory(args.source, args.repo, args.branch, message)
    s = result.stats
    log.info("%d entries, %d files (%d read, %d MB; %d unchanged from the last import) "
             "in %.1f s", s.entries, s.files, s.files_hashed, s.bytes_hashed // 1_000_000,
             s.files_from_cache, time.monotonic() - started)
    print(result.commit)
    return 0
