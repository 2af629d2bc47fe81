"""gitroot gc --keep N: prune old releases.

Never prunes the booted, trial, last good or previous good release.  Besides
those it keeps the N newest releases this device pinned.  Releases on one
branch form a chain (each commit's parent is the release before), so pruning
needs git's shallow boundary: every kept commit is written to the
repository's ``shallow`` file, then ``git gc --prune=now`` drops everything
no kept commit's tree reaches.
"""

import argparse
import os
import subprocess

import pygit2

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args
from gitroot.errors import GitrootError, UsageError
from gitroot.boot.state import atomic_write, booted_commit
from gitroot.device.bootloader import sync_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--keep", type=int, required=True, metavar="N",
                        help="also keep the N newest pinned releases")


def run(args: argparse.Namespace) -> int:
    if args.keep < 0:
        raise UsageError("--keep must be 0 or more")
    device = device_from_args(args)
    repo = device.repo
    store = device.store()
    with store.locked():
        state = store.load()
        keep = {c for c in (booted_commit(), state.last_good, state.previous_good,
                            state.trial.commit if state.trial else None) if c}
        recent = []
        for h in reversed(store.history()):
            c = h.get("commit")
            if c and h.get("action") in ("trial", "pin", "good", "rollback") and c not in recent:
                recent.append(c)
        keep.update(recent[:args.keep])
        keep = {c for c in keep if pygit2.Oid(hex=c) in repo.odb}
        # Drop every other gitroot ref (incoming releases not pinned).
        for ref in list(repo.references):
            if ref.startswith("refs/gitroot/incoming/"):
                target = str(repo.references[ref].resolve().target)
                if target not in keep:
                    repo.references.delete(ref)
        shallow = os.path.join(repo.path, "shallow")
        atomic_write(shallow, "".join(f"{c}\n" for c in sorted(keep)).encode())
        for cmd in (["reflog", "expire", "--expire=now", "--all"],
                    ["gc", "--prune=now", "--quiet"]):
            proc = subprocess.run(["git", "-C", repo.path] + cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise GitrootError(f"git {' '.join(cmd)} failed: {proc.stderr.strip()}")
        # the loader keeps entries (and boot files) for the kept roles only
        sync_device(device, state)
    print(f"kept {len(keep)} releases: " + ", ".join(sorted(c[:12] for c in keep)))
    return 0
