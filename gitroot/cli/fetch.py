"""gitroot fetch [--from PATH|URL]: fetch, check and pin the next release."""

import argparse
import logging
import sys

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args

log = logging.getLogger(__name__)

_SOURCE_NAMES = {"cmdline": "the kernel command line", "remote": "the remote document",
                 "config": "the configuration file"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--from", dest="source", metavar="PATH|URL",
                        help="fetch from here instead of the configured remotes: a git "
                        "URL or path, a bundle file, or a static bundle directory URL "
                        "ending in /")
    parser.add_argument("--branch", help="branch to follow (overrides every other source)")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="accept a release that is not a descendant of the current one "
                        "or older than max_signature_age (only here, on the device: no "
                        "server or remote document can lift these rules)")
    parser.add_argument("--reboot", action="store_true",
                        help="reboot when a new release was pinned")
    parser.add_argument("--progress", action="store_true", default=None,
                        help="show transfer progress (default: when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    from gitroot.device.deadline import Terminated, terminate_on_sigterm

    terminate_on_sigterm()      # a fetch records "failed" before it goes
    try:
        return _fetch(args)
    except Terminated as err:
        log.error("%s", err)
        return 143              # 128 + SIGTERM, as if the signal had killed us


def _fetch(args: argparse.Namespace) -> int:
    from gitroot.device.fetch import Fetcher, reboot, record_skipped
    from gitroot.device.settings import device_settings, fetch_settings
    from gitroot.git.repository import open_or_init_bare

    device = device_from_args(args)
    effective = device_settings(device)
    if effective.noupgrade:
        said = ", ".join(_SOURCE_NAMES.get(s, s) for s in effective.noupgrade_sources)
        message = f"noupgrade is set by {said}: not fetching"
        log.info("%s", message)
        record_skipped(device.store(with_repo=False), effective.branch, message)
        print(f"skipped: {message}")
        return 0
    settings = fetch_settings(
        device, effective, source=args.source, branch=args.branch,
        allow_downgrade=args.allow_downgrade,
        progress=sys.stderr.isatty() if args.progress is None else args.progress)
    outcome = Fetcher(settings, open_or_init_bare(device.repository)).run()
    print(f"{outcome.result}: {outcome.message}")
    if outcome.result == "pinned" and args.reboot:
        reboot()
    return 0
