"""gitroot etc diff|conflicts|resolve: the device's /etc against the release's default."""

import argparse

from gitroot.boot.state import booted_commit
from gitroot.cli.device_args import add_device_arguments
from gitroot.device import etc
from gitroot.device.context import device_from_args
from gitroot.device.persistence import layout_for
from gitroot.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--release", metavar="COMMIT",
                        help="whose /etc (default: the booted release's)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    d = sub.add_parser("diff", help="the device's /etc against the release's default")
    d.add_argument("paths", nargs="*", metavar="PATH", help="only these (e.g. /etc/hosts)")
    sub.add_parser("conflicts", help="files the last merge could not merge")
    r = sub.add_parser("resolve", help="mark a conflict resolved (FILE.rej, FILE.orig go)")
    r.add_argument("path", metavar="PATH")
    r.add_argument("--take-release", action="store_true",
                   help="replace the device's file with the release's (FILE.rej) first")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    layout = layout_for(device.state_dir)
    commit = args.release or booted_commit()
    if not commit:
        raise UsageError("which release? (not booted by gitroot: give --release COMMIT)")
    if args.action == "diff":
        for line in etc.diff(layout, commit, args.paths):
            print(etc.shown(line))
    elif args.action == "conflicts":
        for c in etc.conflicts(layout, commit):
            print(f"/etc/{etc.shown(c['path'])}: {c['reason']}")
    else:
        c = etc.resolve(layout, commit, args.path, args.take_release)
        kept = "the release's version" if args.take_release else "the device's version"
        print(f"/etc/{etc.shown(c['path'])}: resolved, {kept} kept")
    return 0
