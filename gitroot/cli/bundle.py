"""gitroot bundle: compressed git bundles for a static HTTP directory.

    gitroot bundle --repo REPO [--from OLD] --to NEW [--branch B] [--delta] -o FILE
    gitroot bundle --repo REPO [--from OLD] --to NEW [--branch B] [--delta] --publish DIR
    gitroot bundle --index DIR

``-o`` writes one bundle (``--delta``: a delta bundle).  ``--publish`` writes
it into DIR under a name of its own (``BRANCH-OLD-NEW.bundle.xz``) and
updates ``DIR/index.json`` so that NEW is the branch's newest release; with
``--delta`` it writes a delta bundle (``BRANCH-OLD-NEW.delta.xz``) beside
it, for devices that read delta bundles, while older ones keep fetching the
git bundle.  ``--index`` alone rebuilds the index from the bundles in DIR.
See docs/server.md.
"""

import argparse
import os

from gitroot.errors import UsageError
from gitroot.git.bundle import DELTA_FORMAT, BundleEntry
from gitroot.publish.bundle import (create_bundle, create_delta_bundle, default_file_name,
                                    update_index)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", help="the bare repository holding the releases")
    parser.add_argument("--from", dest="from_rev", metavar="OLD", default=None,
                        help="release the devices already have (omit for a full bundle)")
    parser.add_argument("--to", dest="to_rev", metavar="NEW", default=None,
                        help="release to ship (a branch, tag or commit)")
    parser.add_argument("--branch", default=None,
                        help="branch the bundle carries (default: NEW, if it is a branch)")
    parser.add_argument("--delta", action="store_true",
                        help="a delta bundle: changed files as per-file deltas (needs "
                             "--from and bsdiff); with --publish, beside the git bundle")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="FILE", help="write the bundle to FILE")
    where.add_argument("--publish", metavar="DIR",
                       help="write the bundle into DIR and make NEW the branch's head "
                            "in DIR/index.json")
    where.add_argument("--index", metavar="DIR",
                       help="only rebuild DIR/index.json from the bundles in DIR")


def run(args: argparse.Namespace) -> int:
    if args.index:
        if args.to_rev or args.from_rev:
            raise UsageError("--index rebuilds an index only; to add a bundle to it use "
                             "--publish DIR")
        index = update_index(args.index)
        print(f"{os.path.join(args.index, 'index.json')}: {len(index.bundles)} bundles, "
              + ", ".join(f"{b} at {c[:12]}" for b, c in sorted(index.heads.items())))
        return 0
    if not args.repo or not args.to_rev:
        raise UsageError("gitroot bundle needs --repo and --to (or --index DIR)")
    if not (args.output or args.publish):
        raise UsageError("say where the bundle goes: -o FILE or --publish DIR")
    if args.delta and not args.from_rev:
        raise UsageError("--delta needs --from: a delta bundle carries changes to a release")
    if args.publish:
        if not os.path.isdir(args.publish):
            raise UsageError(f"{args.publish}: no such directory")
        partial = os.path.join(args.publish, ".gitroot-bundle.tmp")
        written = []
        makers = [create_bundle] + ([create_delta_bundle] if args.delta else [])
        for make in makers:
            entry = make(args.repo, args.to_rev, partial, from_rev=args.from_rev,
                         branch=args.branch)
            output = os.path.join(args.publish,
                                  default_file_name(entry.branch, entry.from_commit,
                                                    entry.to_commit, entry.format))
            os.replace(partial, output)
            written.append((output, entry))
        update_index(args.publish, heads={entry.branch: entry.to_commit})
    else:
        make = create_delta_bundle if args.delta else create_bundle
        entry = make(args.repo, args.to_rev, args.output, from_rev=args.from_rev,
                     branch=args.branch)
        written = [(args.output, entry)]
    for output, entry in written:
        print(_describe(output, entry))
    return 0


def _describe(output: str, entry: BundleEntry) -> str:
    span = f"{entry.from_commit[:12]}..{entry.to_commit[:12]}" if entry.from_commit \
        else f"full {entry.to_commit[:12]}"
    kind = "delta bundle, " if entry.format == DELTA_FORMAT else ""
    return (f"{output}: {kind}{entry.branch} {span}, {entry.size} bytes "
            f"({entry.unpacked} unpacked), sha256 {entry.sha256}")
