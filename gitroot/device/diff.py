"""What an update changes: files added, removed and changed between two commits.

Compares the two trees (content: blob ids) and the two manifests (metadata),
so a changed owner or mode counts as a change even when the bytes are equal.
Pure reading; no state.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pygit2

from gitroot.git import objects as go
from gitroot.git import manifest as mf
from gitroot.git.release import read_manifest_bytes
from gitroot.git.repository import resolve_commit


@dataclass
class Change:
    path: bytes
    status: str              # "A" added, "D" removed, "M" changed
    size: int                # bytes in the new release (0 for removed)


@dataclass
class DiffResult:
    old: str
    new: str
    changes: List[Change] = field(default_factory=list)

    @property
    def added(self) -> int:
        return sum(1 for c in self.changes if c.status == "A")

    @property
    def removed(self) -> int:
        return sum(1 for c in self.changes if c.status == "D")

    @property
    def changed(self) -> int:
        return sum(1 for c in self.changes if c.status == "M")

    @property
    def bytes(self) -> int:
        """Bytes of content the new release adds or replaces."""
        return sum(c.size for c in self.changes)


def _contents(repo: pygit2.Repository, tree: bytes, prefix: bytes,
              out: Dict[bytes, Tuple[int, bytes]]) -> None:
    for item in go.parse_tree(repo.odb.read(pygit2.Oid(raw=tree))[1]):
        if go.name_problem(item.name) or (prefix == b"" and item.name == mf.MANIFEST_DIR):
            continue
        path = prefix + item.name
        if item.mode == go.MODE_TREE:
            _contents(repo, item.oid, path + b"/", out)
        else:
            out[path] = (item.mode, item.oid)


def _snapshot(repo: pygit2.Repository, rev: str):
    """(commit id, manifest entries, {path: (mode, blob id)}) of a release:
    only its trees and its manifest are read, never a file's content."""
    commit = resolve_commit(repo, rev)
    commit_id = str(commit.id)
    root_tree = commit.tree_id.raw
    manifest = mf.parse_manifest(read_manifest_bytes(repo.odb, root_tree,
                                                     f"commit {commit_id[:12]}"))
    contents: Dict[bytes, Tuple[int, bytes]] = {}
    _contents(repo, root_tree, b"", contents)
    return commit_id, manifest.entries, contents


def diff_commits(repo: pygit2.Repository, old: str, new: str) -> DiffResult:
    old_id, old_meta, old_data = _snapshot(repo, old)
    new_id, new_meta, new_data = _snapshot(repo, new)
    result = DiffResult(old_id, new_id)
    for path in sorted(set(old_meta) | set(new_meta), key=mf.sort_key):
        a: Optional[mf.Entry] = old_meta.get(path)
        b: Optional[mf.Entry] = new_meta.get(path)
        size = (b.size or 0) if b is not None else 0
        if a is None:
            result.changes.append(Change(path, "A", size))
        elif b is None:
            result.changes.append(Change(path, "D", 0))
        elif _meta(a) != _meta(b) or old_data.get(path) != new_data.get(path):
            content_changed = old_data.get(path) != new_data.get(path)
            result.changes.append(Change(path, "M", size if content_changed else 0))
    return result


def _meta(e: mf.Entry):
    # hardlink leadership may move between releases without any change that
    # a program could see; compare everything else
    return (e.kind, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.rdev, e.xattrs)
