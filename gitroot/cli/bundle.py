"""gitroot bundle: compressed git bundles for a static HTTP directory.

    gitroot bundle --repo REPO [--from OLD] --to NEW [--branch B] -o FILE
    gitroot bundle --repo REPO [--from OLD] --to NEW [--branch B] --publish DIR
    gitroot bundle --index DIR

``-o`` writes one bundle.  ``--publish`` writes it into DIR under a name of
its own (``BRANCH-OLD-NEW.bundle.xz``) and updates ``DIR/index.json`` so that
NEW is the branch's newest release.  ``--index`` alone rebuilds the index
from the bundles in DIR.  See docs/server.md.
"""

import argparse
import os

from gitroot.publish.bundle import create_bundle, default_file_name, update_index
from gitroot.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", help="the bare repository holding the releases")
    parser.add_argument("--from", dest="from_rev", metavar="OLD", default=None,
                        help="release the devices already have (omit for a full bundle)")
    parser.add_argument("--to", dest="to_rev", metavar="NEW", default=None,
                        help="release to ship (a branch, tag or commit)")
    parser.add_argument("--branch", default=None,
                        help="branch the bundle carries (default: NEW, if it is a branch)")
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
    if args.publish:
        if not os.path.isdir(args.publish):
            raise UsageError(f"{args.publish}: no such directory")
        partial = os.path.join(args.publish, ".gitroot-bundle.tmp")
        entry = create_bundle(args.repo, args.to_rev, partial, from_rev=args.from_rev,
                              branch=args.branch)
        output = os.path.join(args.publish,
                              default_file_name(entry.branch, entry.from_commit,
                                                entry.to_commit))
        os.replace(partial, output)
        update_index(args.publish, heads={entry.branch: entry.to_commit})
    else:
        entry = create_bundle(args.repo, args.to_rev, args.output, from_rev=args.from_rev,
                              branch=args.branch)
        output = args.output
    span = f"{entry.from_commit[:12]}..{entry.to_commit[:12]}" if entry.from_commit \
        else f"full {entry.to_commit[:12]}"
    print(f"{output}: {entry.branch} {span}, {entry.size} bytes, sha256 {entry.sha256}")
    return 0
