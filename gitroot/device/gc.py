"""Pruning old releases from a device's repository.

Never prunes the booted, trial, last good or previous good release.  Besides
those it keeps the N newest releases this device pinned.  Releases on one
branch form a chain (each commit's parent is the release before), so pruning
needs git's shallow boundary: every kept commit is written to the
repository's ``shallow`` file, then ``git gc --prune=now`` drops everything
no kept commit's tree reaches.

The caller holds the state lock for the whole run: a fetch must not pin a
release that gc is about to prune.
"""

import os
import subprocess
from typing import List, Set

import pygit2

from gitroot import atomic
from gitroot.boot.state import StateStore, booted_commit
from gitroot.errors import GitrootError, StateError, UsageError


def releases_to_keep(store: StateStore, repo: pygit2.Repository, keep_recent: int) -> Set[str]:
    """The commits gc must keep: named by the state, booted, or recently pinned."""
    state = store.load()
    keep = {c for c in (booted_commit(), state.last_good, state.previous_good,
                        state.trial.commit if state.trial else None) if c}
    recent: List[str] = []
    for h in reversed(store.history()):
        c = h.get("commit")
        if c and h.get("action") in ("trial", "pin", "good", "rollback") and c not in recent:
            recent.append(c)
    keep.update(recent[:keep_recent])
    return {c for c in keep if pygit2.Oid(hex=c) in repo.odb}


def collect_garbage(store: StateStore, repo: pygit2.Repository, keep_recent: int) -> Set[str]:
    """Prune everything but :func:`releases_to_keep`; returns what was kept."""
    if keep_recent < 0:
        raise UsageError("--keep must be 0 or more")
    keep = releases_to_keep(store, repo, keep_recent)
    # Drop every other gitroot ref (incoming releases not pinned).
    for ref in list(repo.references):
        if ref.startswith("refs/gitroot/incoming/"):
            target = str(repo.references[ref].resolve().target)
            if target not in keep:
                repo.references.delete(ref)
    shallow = os.path.join(repo.path, "shallow")
    try:
        atomic.write_file(shallow, "".join(f"{c}\n" for c in sorted(keep)).encode())
    except OSError as err:
        raise StateError(f"cannot write {shallow}: {err.strerror}") from None
    for cmd in (["reflog", "expire", "--expire=now", "--all"],
                ["gc", "--prune=now", "--quiet"]):
        proc = subprocess.run(["git", "-C", repo.path] + cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise GitrootError(f"git {' '.join(cmd)} failed: {proc.stderr.strip()}")
    return keep
