"""gitroot verify --repo REPO REV [--allowed-signers FILE] [--keyring FILE]
[--policy strict|sloppy|none] [--full]

Exit status 0 only for a good signature from a trusted key (or what the
policy lets through); each failure class has its own status, listed in
``gitroot.errors`` (21 no signature, 22 bad, 23 untrusted key, 24 key
expired or not yet valid, 25 malformed, 26 unsupported, 7 corrupt object).
"""

import argparse
import logging
import time

from gitroot.git.repository import open_repo
from gitroot.signing import POLICIES, TrustConfig, verify_commit_objects, verify_revision

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, help="the (bare) git repository")
    parser.add_argument("rev", metavar="REV", help="signed tag, or signed commit")
    parser.add_argument("--allowed-signers", metavar="FILE", default=None,
                        help="OpenSSH allowed-signers file of trusted SSH keys")
    parser.add_argument("--keyring", metavar="FILE", default=None,
                        help="OpenPGP keyring of trusted keys (gpg --export)")
    parser.add_argument("--policy", choices=POLICIES, default="strict",
                        help="strict: require a good trusted signature (default); "
                             "sloppy: allow a missing one; none: check nothing")
    parser.add_argument("--full", action="store_true",
                        help="also check that every object under the commit is "
                             "present and hashes to its id")


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    trust = TrustConfig(allowed_signers=args.allowed_signers, keyring=args.keyring)
    verdict = verify_revision(repo, args.rev, trust, args.policy)
    for warning in verdict.warnings:
        log.warning("warning: %s", warning)
    if verdict.verified:
        what = f"tag {verdict.tag_name}" if verdict.signed_object_id != verdict.commit_id \
            else "commit"
        when = time.strftime(" at %Y-%m-%d %H:%M:%S UTC", time.gmtime(verdict.signed_at)) \
            if verdict.signed_at else ""
        print(f"good {verdict.format} signature on {what} {verdict.signed_object_id}{when}")
        print(f"signer: {verdict.principal}")
        print(f"key: {verdict.fingerprint}")
    else:
        print(f"not verified (policy {verdict.policy})")
    print(f"commit: {verdict.commit_id}")
    if verdict.binding_error:
        print(f"channels: malformed ({verdict.binding_error})")
    else:
        print(f"channels: {', '.join(verdict.channels) if verdict.channels else 'none (unbound)'}")
    if args.full:
        count = verify_commit_objects(repo, verdict.commit_id)
        print(f"objects: {count} present and intact")
    return 0
