"""Pruning old releases from a device's repository, never what it may boot.

What gc keeps is derived from every place that says what the device may
boot, not from refs alone (refs can be lost while state.json is intact):

* the release booted now, as the boot path recorded it in
  ``/run/gitroot/booted`` (or ``--booted``) -- possibly a debug pin named by
  a short id or a ref name, which is resolved to its full id;
* the trial, last good and previous good releases the state names;
* the releases ``refs/gitroot/last-good``, ``previous-good`` and ``trial``
  name (the state file may be the thing that was lost);
* the N newest releases this device pinned (``history.log``).

gc refuses to run when it cannot tell what is booted (no boot record, or one
naming nothing in the repository) or cannot read the state: guessing there
could prune the running system's fallback.

Every kept release gets a ref before anything is pruned (the state's refs
are rewritten, the others get ``refs/gitroot/keep/ID``; keep refs of earlier
runs that are no longer kept are dropped), because ``git gc`` keeps only
what refs reach.  Releases on one branch form a chain (each commit's parent
is the release before), so pruning needs git's shallow boundary: every kept
commit is written to the repository's ``shallow`` file, then ``git gc
--prune=now`` drops everything no kept commit's tree reaches.

The caller holds the fetch lock (a fetch's new pack must not be pruned
before its ref is written) and the state lock (a fetch must not pin a
release that gc is about to prune) for the whole run.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import pygit2

from gitroot import atomic
from gitroot.boot.state import (REF_LAST_GOOD, REF_PREVIOUS_GOOD, REF_TRIAL, StateStore,
                                booted_commit)
from gitroot.errors import GitrootError, RepositoryError, StateError, UsageError
from gitroot.git.command import failure_summary, run_git
from gitroot.git.refs import is_full_object_id

REF_KEEP = "refs/gitroot/keep/"
INCOMING = "refs/gitroot/incoming/"


@dataclass(frozen=True)
class Kept:
    """What gc keeps: commit id -> why (``booted``, ``last good``, ...)."""

    reasons: Dict[str, List[str]]

    @property
    def commits(self) -> List[str]:
        return sorted(self.reasons)


def _full_id(repo: pygit2.Repository, rev: str) -> Optional[str]:
    """The full id of the commit *rev* names (a full or short id, or a ref
    name), or None.  Never ``pygit2.Oid(hex=short)``, which pads with zeros."""
    from gitroot.git.repository import resolve_commit
    try:
        return str(resolve_commit(repo, rev).id)
    except (RepositoryError, ValueError, pygit2.GitError):
        return None


def releases_to_keep(store: StateStore, repo: pygit2.Repository, keep_recent: int,
                     booted: Optional[str] = None) -> Kept:
    """The commits gc must keep, and why (see the module docstring).

    *booted* defaults to the boot record in /run.  Raises StateError when the
    booted release cannot be told, or the state cannot be read.
    """
    booted_rev = booted if booted is not None else booted_commit()
    if booted_rev is None:
        raise StateError("cannot tell which release is booted (no boot record in "
                         "/run/gitroot/booted); not pruning anything (give --booted COMMIT)")
    booted_id = _full_id(repo, booted_rev)
    if booted_id is None:
        raise StateError(f"the booted release {booted_rev!r} is not in the repository; "
                         "not pruning anything")
    state = store.load()
    reasons: Dict[str, List[str]] = {}

    def keep(commit: Optional[str], why: str) -> None:
        if commit is not None:
            reasons.setdefault(commit, []).append(why)

    keep(booted_id, "booted")
    keep(state.trial.commit if state.trial else None, "trial")
    keep(state.last_good, "last good")
    keep(state.previous_good, "previous good")
    for ref, why in ((REF_TRIAL, "trial ref"), (REF_LAST_GOOD, "last good ref"),
                     (REF_PREVIOUS_GOOD, "previous good ref")):
        if ref in repo.references:
            keep(_full_id(repo, str(repo.references[ref].resolve().target)), why)
    recent: List[str] = []
    for entry in reversed(store.history()):
        rev = entry.get("commit") if isinstance(entry, dict) else None
        if isinstance(rev, str) and entry.get("action") in ("trial", "pin", "good",
                                                             "rollback"):
            commit = _full_id(repo, rev) if is_full_object_id(rev) else None
            if commit is not None and commit not in recent:
                recent.append(commit)
    for commit in recent[:keep_recent]:
        keep(commit, "recently pinned")
    # A commit the state names but the repository lacks cannot be kept (it
    # is gone already); everything else must stay.
    return Kept({c: why for c, why in reasons.items() if pygit2.Oid(hex=c) in repo.odb})


def collect_garbage(store: StateStore, repo: pygit2.Repository, keep_recent: int,
                    booted: Optional[str] = None) -> Kept:
    """Prune everything but :func:`releases_to_keep`; returns what was kept."""
    if keep_recent < 0:
        raise UsageError("--keep must be 0 or more")
    kept = releases_to_keep(store, repo, keep_recent, booted)
    _hold_with_refs(repo, kept)
    shallow = os.path.join(repo.path, "shallow")
    try:
        atomic.write_file(shallow, "".join(f"{c}\n" for c in kept.commits).encode())
    except OSError as err:
        raise StateError(f"cannot write {shallow}: {err.strerror}") from None
    for cmd in (["reflog", "expire", "--expire=now", "--all"],
                ["gc", "--prune=now", "--quiet"]):
        proc = run_git(repo.path, *cmd)
        if proc.returncode != 0:
            raise GitrootError(f"git {' '.join(cmd)} failed: "
                               f"{failure_summary(proc.stderr, proc.returncode)}")
    return kept


def _hold_with_refs(repo: pygit2.Repository, kept: Kept) -> None:
    """A ref for every kept release, and none for anything else gc may prune."""
    try:
        for ref in list(repo.references):
            if ref.startswith((REF_KEEP, INCOMING)):
                target = str(repo.references[ref].resolve().target)
                if target not in kept.reasons or ref.startswith(INCOMING):
                    repo.references.delete(ref)
        for commit in kept.commits:
            repo.create_reference_direct(REF_KEEP + commit, pygit2.Oid(hex=commit), True,
                                         message="gitroot gc: kept")
    except (pygit2.GitError, OSError, KeyError) as err:
        raise StateError(f"cannot update the refs that hold the kept releases: {err}") \
            from None
