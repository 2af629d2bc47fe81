"""The device's /etc against the release's: differences, conflicts, resolving them.

Each release the device has booted has ``PERSIST/etc/COMMIT/release`` (its
/etc as published) and ``PERSIST/etc/COMMIT/device`` (the device's, which
the booted system sees at /etc); see :mod:`gitroot.boot.persist`.  This
module reads them for ``gitroot etc`` and ``gitroot status`` and records
resolved conflicts in ``merge.json``.  Library code: raises, never prints.
"""

import contextlib
import difflib
import fcntl
import json
import os
import time
from typing import Iterator, List, Optional

from gitroot.boot import etcmerge
from gitroot.boot.persist import Layout, PersistError
from gitroot.atomic import write_file as atomic_write


def _dirs(layout: Layout, commit: str):
    base = layout.etc_of(commit)
    if not os.path.isdir(base):
        raise PersistError(f"no /etc kept for release {commit[:12]} in {layout.etc} "
                           "(booted ephemeral, or never booted)")
    return os.path.join(base, "release"), os.path.join(base, "device")


def conflicts(layout: Layout, commit: str) -> List[dict]:
    """The unresolved conflicts of the merge that made *commit*'s /etc."""
    record = layout.merge_record(commit) or {}
    return list(record.get("conflicts") or [])


def diff(layout: Layout, commit: str, paths: Optional[List[str]] = None) -> Iterator[str]:
    """The device's /etc against the release's default, as ``git diff --no-index`` shows it
    (lines without their newline)."""
    release, device = _dirs(layout, commit)
    old, new = etcmerge.scan(release), etcmerge.scan(device)
    wanted = [p.strip("/").removeprefix("etc/").strip("/") for p in paths or []]
    for path in sorted(set(old) | set(new), key=lambda p: p.split("/")):
        if not path or (wanted and not any(path == w or path.startswith(w + "/")
                                           for w in wanted)):
            continue
        a, b = old.get(path), new.get(path)
        if a == b or (a and b and a.kind == b.kind == "dir" and a.metadata() == b.metadata()):
            continue
        yield from _diff_entry(path, a, b, release, device)


def _mode(entry) -> str:
    kind = {"file": 0o100000, "symlink": 0o120000, "dir": 0o040000}.get(entry.kind, 0)
    return f"{kind | entry.mode:06o}"


def _diff_entry(path, a, b, release, device) -> Iterator[str]:
    if (a and a.kind == "dir") or (b and b.kind == "dir"):
        if a and b and a.kind == b.kind:
            yield f"diff --git a/etc/{path} b/etc/{path}"
            yield from _metadata_lines(a, b)
        else:
            yield f"diff --git a/etc/{path} b/etc/{path}"
            yield f"{'deleted' if a else 'new'} directory"
        return
    yield f"diff --git a/etc/{path} b/etc/{path}"
    if a is None:
        yield f"new file mode {_mode(b)}"
    elif b is None:
        yield f"deleted file mode {_mode(a)}"
    else:
        yield from _metadata_lines(a, b)
    if a is not None and b is not None and a.body == b.body and a.kind == b.kind:
        return
    old = _content(release, path, a)
    new = _content(device, path, b)
    if old is None or new is None:
        yield f"Binary files {'a/etc/' + path if a else '/dev/null'} and " \
              f"{'b/etc/' + path if b else '/dev/null'} differ"
        return
    yield from (line.rstrip("\n") for line in difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        f"a/etc/{path}" if a else "/dev/null", f"b/etc/{path}" if b else "/dev/null",
        lineterm="\n"))


def _metadata_lines(a, b) -> Iterator[str]:
    if a.kind != b.kind or a.mode != b.mode:
        yield f"old mode {_mode(a)}"
        yield f"new mode {_mode(b)}"
    if (a.uid, a.gid) != (b.uid, b.gid):
        yield f"# owner {a.uid}:{a.gid} -> {b.uid}:{b.gid}"
    if a.xattrs != b.xattrs:
        yield "# xattrs " + ", ".join(sorted({k for k, _ in a.xattrs} ^ {k for k, _ in b.xattrs}
                                            | {k for k, v in a.xattrs
                                               if (k, v) not in b.xattrs})) + " differ"


def _content(root: str, path: str, entry) -> Optional[str]:
    if entry is None:
        return ""
    full = os.path.join(root, path)
    if entry.kind == "symlink":
        return os.readlink(full) + "\n"
    if entry.kind != "file":
        return None
    if os.lstat(full).st_size > etcmerge.TEXT_MERGE_LIMIT:
        return None
    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    if b"\0" in data:
        return None
    return data.decode("utf-8", "replace")


@contextlib.contextmanager
def _locked(layout: Layout):
    fd = os.open(os.path.join(layout.etc, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def resolve(layout: Layout, commit: str, path: str, take_release: bool = False) -> dict:
    """Mark the conflict on *path* resolved: with *take_release*, the release's
    version (FILE.rej) replaces the device's first; FILE.rej and FILE.orig go."""
    _, device = _dirs(layout, commit)
    path = path.strip("/").removeprefix("etc/").strip("/")
    with _locked(layout):
        record = layout.merge_record(commit) or {}
        found = [c for c in record.get("conflicts") or [] if c.get("path") == path]
        if not found:
            raise PersistError(f"no conflict on /etc/{path} in release {commit[:12]}")
        conflict = found[0]
        parent = os.path.dirname(os.path.join(device, path))
        if not os.path.isdir(parent) or os.path.islink(parent):
            raise PersistError(f"/etc/{os.path.dirname(path)} is not a directory any more")
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            name = os.path.basename(path)
            reject = conflict.get("reject")
            if take_release:
                if not reject:
                    raise PersistError(f"/etc/{path}: the release has no version of it "
                                       "to take (no .rej)")
                os.replace(os.path.basename(reject), name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            for side in (reject, conflict.get("original")):
                if side:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.basename(side), dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        record["conflicts"] = [c for c in record["conflicts"] if c is not conflict]
        record.setdefault("resolved", []).append(
            {**conflict, "time": time.time(), "took": "release" if take_release else "device"})
        atomic_write(os.path.join(layout.etc_of(commit), "merge.json"),
                     (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return conflict



def shown(text: str) -> str:
    """A path or diff line fit for a terminal: bytes that are not UTF-8 (kept
    as surrogates by os.fsdecode) become U+FFFD instead of an exception."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
