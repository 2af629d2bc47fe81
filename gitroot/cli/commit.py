"""gitroot commit SRC --repo REPO --branch BRANCH [--channel C]... [-m MESSAGE]

The message gets one ``Gitroot-Channel:`` trailer for BRANCH and each
``--channel``: the channel binding a device checks (gitroot.signing.channel).
"""

import argparse
import logging
import time

from gitroot.publish.importer import import_directory

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="root filesystem tree to import")
    parser.add_argument("--repo", required=True,
                        help="bare repository (created if missing)")
    parser.add_argument("--branch", required=True, help="branch to commit on")
    parser.add_argument("-m", "--message", default=None, help="commit message")
    parser.add_argument("--channel", action="append", default=[], metavar="BRANCH",
                        help="also bind the release to this channel (repeatable): devices "
                        "following it accept the release once that branch points at it "
                        "(promotion, docs/server.md)")
    parser.add_argument("--sign-key", metavar="KEY",
                        help="sign the commit: an SSH private key file, or an OpenPGP "
                        "key id or fingerprint")
    parser.add_argument("--sign-format", choices=("ssh", "openpgp"),
                        help="signature format (default: guessed from KEY)")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    from gitroot.errors import UsageError
    from gitroot.signing.channel import BindingError, bind_message
    try:
        message = bind_message(args.message or f"gitroot commit of {args.source}",
                               [args.branch] + args.channel)
    except BindingError as err:
        raise UsageError(str(err)) from None
    signer = None
    if args.sign_key:
        from gitroot.signing.sign import make_signer
        signer = make_signer(args.sign_key, args.sign_format)
    result = import_directory(args.source, args.repo, args.branch, message, signer=signer)
    s = result.stats
    log.info("%d entries, %d files (%d read, %d MB; %d unchanged from the last import) "
             "in %.1f s", s.entries, s.files, s.files_hashed, s.bytes_hashed // 1_000_000,
             s.files_from_cache, time.monotonic() - started)
    print(result.commit)
    return 0
