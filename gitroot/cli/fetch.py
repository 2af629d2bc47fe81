"""gitroot fetch [--from PATH|URL]: fetch, check and pin the next release."""

import argparse
import logging
import sys

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--from", dest="source", metavar="PATH|URL",
                        help="fetch from here instead of the configured remotes: a git "
                        "URL or path, a bundle file, or a static bundle directory URL "
                        "ending in /")
    parser.add_argument("--branch", help="branch to follow (overrides every other source)")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="accept a release that is not a descendant of the current one")
    parser.add_argument("--reboot", action="store_true",
                        help="reboot when a new release was pinned")
    parser.add_argument("--progress", action="store_true", default=None,
                        help="show transfer progress (default: when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    from gitroot.device.fetch import Fetcher, FetchSettings, reboot
    from gitroot.device.remoteconfig import effective_settings, fetch_remote_settings

    device = device_from_args(args)
    config = device.config
    remote = fetch_remote_settings(config.remote_config) if config.remote_config.url else None
    effective = effective_settings(config, device.boot, remote)
    if effective.noupgrade:
        log.info("noupgrade (from %s): not fetching", ", ".join(effective.noupgrade_sources))
        print("skipped: noupgrade")
        return 0
    if args.source:
        sources = [args.source]
        config.require_trust()
    else:
        sources = list(config.remotes)
        config.require_fetchable()
    keys = config.trusted_keys
    settings = FetchSettings(
        repository=device.repository, state_dir=device.state_dir,
        boot_dir=config.boot_dir, branch=args.branch or effective.branch,
        sources=sources, policy=config.signature_policy,
        allowed_signers=keys.allowed_signers, keyring=keys.keyring,
        tries=config.tries, max_signature_age=config.max_signature_age,
        allow_downgrade=args.allow_downgrade,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
        pinned=effective.pinned, pinned_source=effective.pinned_source,
        bootloader=config.bootloader.type, cmdline=config.bootloader.cmdline,
    )
    from gitroot.git.repository import open_or_init_bare
    repo = open_or_init_bare(device.repository)
    outcome = Fetcher(settings, repo).run()
    print(f"{outcome.result}: {outcome.message}")
    if outcome.result == "pinned" and args.reboot:
        reboot()
    return 0
