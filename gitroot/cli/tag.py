"""gitroot tag --repo REPO NAME REV --sign-key KEY [--sign-format ssh|openpgp] [-m MESSAGE]"""

import argparse

from gitroot.git.repository import open_repo
from gitroot.signing import create_signed_tag, make_signer
from gitroot.signing.sign import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, help="the (bare) git repository")
    parser.add_argument("name", metavar="NAME", help="tag name (refs/tags/NAME)")
    parser.add_argument("rev", metavar="REV", help="commit to tag")
    parser.add_argument("--sign-key", required=True, metavar="KEY",
                        help="SSH private key file, or OpenPGP key id or fingerprint")
    parser.add_argument("--sign-format", choices=FORMATS, default=None,
                        help="signature format (default: from KEY)")
    parser.add_argument("--gnupg-home", metavar="DIR", default=None,
                        help="GnuPG home directory holding the OpenPGP secret key")
    parser.add_argument("-m", "--message", default=None,
                        help="tag message (default: the tag name)")
    parser.add_argument("--force", action="store_true", help="replace an existing tag")


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    signer = make_signer(args.sign_key, args.sign_format, args.gnupg_home)
    tag_id = create_signed_tag(repo, args.name, args.rev, signer, args.message, args.force)
    print(tag_id)
    return 0
