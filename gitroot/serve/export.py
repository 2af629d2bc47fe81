"""A directory of a commit written out as the mount shows it, read from the repository.

The first boot of a release on a device copies the release's published
/etc into the persistence directory (gitroot.boot.persist).  Copied through
the FUSE mount, every stat, xattr and read of every file is a round trip
from the kernel into the daemon's Python: 12.7 s of a first boot under
emulation (docs/performance.md, "Boot time").  Here the same entries come
from the commit's :class:`~gitroot.serve.vfs.RootView` in the process that
asks (``gitroot boot-helper``, which has pygit2 loaded already), and are
written by the merge's own writer (:func:`gitroot.boot.etcmerge.write_tree`),
so the result is the one the mount's copy would give: the view is what the
mount serves (the FUSE adapter passes its attributes, xattrs, link targets
and bytes through unchanged), and the tree of entries is the one
:func:`gitroot.boot.etcmerge.scan` makes of a directory, with its bounds.
tests/integration/test_export.py compares the two on a commit with odd
metadata.

An entry the mount would answer with EIO (a corrupt object, a manifest
line that disagrees with the tree) fails the copy with
:class:`~gitroot.boot.etcmerge.MergeError`, as the copy through the mount
would.

No threads; the view is used by one caller at a time.
"""

import os
import stat
from typing import Iterator

import pygit2

from gitroot.boot import etcmerge
from gitroot.git import manifest as mf
from gitroot.serve.vfs import EntryError, Node, RootView, open_view

#: bytes of a file read from the view at a time (a blob above
#: vfs.STREAM_ABOVE is streamed, so memory stays bounded)
CHUNK = 1 << 20

_KINDS = {mf.KIND_FILE: "file", mf.KIND_DIR: "dir", mf.KIND_SYMLINK: "symlink"}


def write_directory(repo_path: str, commit: str, path: bytes, out: str) -> None:
    """The directory *path* (``b"etc"``) of *commit* in the repository at
    *repo_path*, written to *out* (which must not exist) with all metadata."""
    write_view_directory(open_view(repo_path, commit), path, out)


def write_view_directory(view: RootView, path: bytes, out: str) -> None:
    """As :func:`write_directory`, from an open view."""
    tree = directory_tree(view, path)
    etcmerge.write_tree(tree, lambda rel: _chunks(view, _join(path, rel)), out)


def directory_tree(view: RootView, path: bytes) -> etcmerge.Tree:
    """Every entry under *path* as :func:`gitroot.boot.etcmerge.scan` reads
    them from the mount (relative str paths, "" for *path* itself)."""
    tree: etcmerge.Tree = {}
    top = _lookup(view, path)
    if top.kind != mf.KIND_DIR:
        raise etcmerge.MergeError(f"/{_shown(path)}: not a directory")
    tree[""] = _entry(view, path, top)
    _add_directory(view, path, top, "", tree, 1)
    return tree


def _add_directory(view: RootView, path: bytes, node: Node, rel: str,
                   tree: etcmerge.Tree, depth: int) -> None:
    if depth > etcmerge.MAX_DEPTH:
        raise etcmerge.MergeError(f"/{_shown(path)}: deeper than {etcmerge.MAX_DEPTH} levels")
    try:
        children = view.children(node)
    except EntryError as err:
        raise etcmerge.MergeError(f"/{_shown(path)}: {err}") from None
    for name in sorted(children):
        child_path = path + b"/" + name
        child = children[name]
        if child.error is not None:
            raise etcmerge.MergeError(f"/{_shown(child_path)}: {child.error}")
        if len(tree) >= etcmerge.MAX_ENTRIES:
            raise etcmerge.MergeError(f"/{_shown(path)}: more than {etcmerge.MAX_ENTRIES} "
                                      "entries")
        child_rel = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
        entry = _entry(view, child_path, child)
        tree[child_rel] = entry
        if entry.kind == "dir":
            _add_directory(view, child_path, child, child_rel, tree, depth + 1)


def _entry(view: RootView, path: bytes, node: Node) -> etcmerge.Entry:
    mode, _ino, _nlink, uid, gid, _size, rdev, mtime_ns = node.stat
    kind = _KINDS.get(node.kind, "special")
    if kind == "symlink":
        try:
            body: object = view.readlink(path)
        except EntryError as err:
            raise etcmerge.MergeError(f"/{_shown(path)}: {err}") from None
    elif kind == "special":
        body = (stat.S_IFMT(mode), rdev)
    else:
        # a file's digest is what the merge compares; this tree is only
        # written, and the merge scans the written copy
        body = None
    # names as os.listxattr gives them through the mount, in scan's order
    xattrs = tuple(sorted((os.fsdecode(name), value) for name, value in node.xattrs))
    etcmerge.check_xattrs(f"/{_shown(path)}", xattrs)
    return etcmerge.Entry(kind, stat.S_IMODE(mode), uid, gid, xattrs, body, mtime_ns)


def _chunks(view: RootView, path: bytes) -> Iterator[bytes]:
    offset = 0
    while True:
        try:
            data = view.read_file(path, CHUNK, offset)
        except (EntryError, pygit2.GitError) as err:
            raise etcmerge.MergeError(f"/{_shown(path)}: {err}") from None
        if not data:
            return
        yield data
        offset += len(data)


def _lookup(view: RootView, path: bytes) -> Node:
    try:
        return view.lookup(path)
    except FileNotFoundError:
        reason = "not in the release"
    except NotADirectoryError:
        reason = "under a path that is not a directory"
    except (EntryError, OSError) as err:
        reason = str(err)
    raise etcmerge.MergeError(f"/{_shown(path)}: {reason}")


def _join(path: bytes, rel: str) -> bytes:
    return path + b"/" + os.fsencode(rel) if rel else path


def _shown(path: bytes) -> str:
    return os.fsdecode(path)
