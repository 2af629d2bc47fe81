"""Three-way merge of /etc: the release's defaults, the device's changes.

When a device boots a release for the first time, its /etc is built from
three directory trees: *base* (the /etc of the release it ran before, as
published), *local* (the device's /etc under that release) and *new* (the
/etc of the release now booting, as published).  Each path is decided on
its own:

=============================================  ================================
the device (local vs base)  the release (new)  result
=============================================  ================================
unchanged                   anything           new (a removal included)
changed or removed          unchanged          local (a removal stays removed)
changed                     changed the same   local (= new)
changed                     changed otherwise  text files: a clean line merge;
                                               else local kept, ``FILE.rej``
                                               (new) and ``FILE.orig`` (base)
                                               beside it, a conflict recorded
removed                     changed            stays removed, ``FILE.rej`` and
                                               ``FILE.orig`` written, recorded
changed                     removed            local kept, ``FILE.orig``, recorded
=============================================  ================================

Metadata (owner, group, mode, xattrs) is merged the same way, field by field
(xattrs name by name), so a device's ``chmod`` survives a release that
changed the file's content, and the other way round.  Symlinks, special
files and binary files are compared as wholes: their only merges are "take
one side".  The ``.rej``/``.orig`` names are Baserock's convention.

The text merge is a diff3 merge done with :mod:`difflib` (each side's
changes against base as line hunks; hunks of the two sides that overlap or
touch are a conflict unless identical), because this module runs in the
initramfs, where there is neither ``git merge-file`` nor a C merge library:
only python3's standard library.  The unit tests compare its clean merges
with ``git merge-file``'s.  Files over :data:`TEXT_MERGE_LIMIT` or holding a
NUL byte are binary.

Safety against hostile trees: every tree is read with ``lstat`` and never
through a symlink; the output tree is created fresh and written only
through directory file descriptors opened with ``O_NOFOLLOW``, so a name
(from ``os.scandir``, never containing ``/``) and a symlink in any input can
never make a write land outside the output directory.  Entry counts, depth
and xattr sizes are bounded (:class:`MergeError`).

Crash safety is the caller's (:mod:`gitroot.boot.persist`): the output is
built in a new directory that is renamed into place once complete.

No threads; standard library only (the initramfs imports it).
"""

import contextlib
import difflib
import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from gitroot.errors import PersistError

TEXT_MERGE_LIMIT = 1 << 20     # bytes per side; larger files are merged as wholes
MAX_ENTRIES = 100_000          # per tree: /etc holds a few thousand at most
MAX_DEPTH = 64
MAX_XATTR_BYTES = 64 * 1024    # per entry
REJECT_SUFFIX = ".rej"
ORIGINAL_SUFFIX = ".orig"


class MergeError(PersistError):
    """A tree cannot be read or the merged tree cannot be written."""


@dataclass(frozen=True)
class Entry:
    """One path of a tree, as the merge compares it."""

    kind: str                   # "file", "dir", "symlink" or "special"
    mode: int                   # permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    xattrs: Tuple[Tuple[str, bytes], ...] = ()
    body: object = None         # sha256 of a file, target of a symlink, (type, rdev) of a special
    mtime_ns: int = field(default=0, compare=False)

    def metadata(self) -> Dict[str, object]:
        fields: Dict[str, object] = {"mode": self.mode, "uid": self.uid, "gid": self.gid}
        fields.update((f"xattr:{name}", value) for name, value in self.xattrs)
        return fields


Tree = Dict[str, Entry]         # relative path ("a/b") -> entry; "" is the top directory


@dataclass(frozen=True)
class Conflict:
    path: str
    reason: str
    reject: Optional[str] = None     # path of FILE.rej in the output, if written
    original: Optional[str] = None   # path of FILE.orig in the output, if written

    def to_json(self) -> dict:
        return {"path": self.path, "reason": self.reason, "reject": self.reject,
                "original": self.original}


@dataclass
class MergeResult:
    conflicts: List[Conflict] = field(default_factory=list)
    merged_text: List[str] = field(default_factory=list)   # paths merged line by line


# -- reading trees ------------------------------------------------------------

def scan(root: str) -> Tree:
    """Every entry under *root* (which must be a directory), never following a symlink."""
    tree: Tree = {}
    try:
        top = os.lstat(root)
    except OSError as err:
        raise MergeError(f"{root}: {err.strerror}") from None
    if not stat.S_ISDIR(top.st_mode):
        raise MergeError(f"{root}: not a directory")
    tree[""] = _entry(root, top)
    _scan_dir(root, "", tree, 1)
    return tree


def _scan_dir(root: str, rel: str, tree: Tree, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise MergeError(f"{root}/{rel}: deeper than {MAX_DEPTH} levels")
    path = os.path.join(root, rel) if rel else root
    try:
        with os.scandir(path) as it:
            names = sorted(e.name for e in it)
    except OSError as err:
        raise MergeError(f"{path}: {err.strerror}") from None
    for name in names:
        child = f"{rel}/{name}" if rel else name
        full = os.path.join(root, child)
        try:
            st = os.lstat(full)
        except OSError as err:
            raise MergeError(f"{full}: {err.strerror}") from None
        if len(tree) >= MAX_ENTRIES:
            raise MergeError(f"{root}: more than {MAX_ENTRIES} entries")
        entry = _entry(full, st)
        tree[child] = entry
        if entry.kind == "dir":
            _scan_dir(root, child, tree, depth + 1)


def _entry(path: str, st: os.stat_result) -> Entry:
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        kind, body = "file", _digest(path)
    elif fmt == stat.S_IFDIR:
        kind, body = "dir", None
    elif fmt == stat.S_IFLNK:
        kind, body = "symlink", os.fsencode(os.readlink(path))
    else:
        kind, body = "special", (fmt, st.st_rdev)
    return Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, _xattrs(path),
                 body, st.st_mtime_ns)


def _digest(path: str) -> str:
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise MergeError(f"{path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _xattrs(path: str) -> Tuple[Tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise MergeError(f"{path}: extended attributes: {err.strerror}") from None
    out, total = [], 0
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.ENODATA:
                continue
            raise MergeError(f"{path}: xattr {name}: {err.strerror}") from None
        total += len(name) + len(value)
        if total > MAX_XATTR_BYTES:
            raise MergeError(f"{path}: more than {MAX_XATTR_BYTES} bytes of xattrs")
        out.append((name, value))
    return tuple(out)


def _read(root: str, rel: str) -> bytes:
    path = os.path.join(root, rel)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise MergeError(f"{path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


# -- deciding -------------------------------------------------------------------

@dataclass(frozen=True)
class _Decision:
    """What one output path becomes."""

    entry: Optional[Entry]          # None: absent
    source: Optional[str]           # tree the content is copied from: "local", "new", "base"
    content: Optional[bytes] = None  # a text merge's result (source ignored)
    conflict: Optional[str] = None   # reason, when local was kept over a release change


def _three_way(base, local, new, conflict_marker):
    """The value the merge keeps for one field: new if the device left it,
    local if the release left it or both agree, else *conflict_marker*."""
    if local == base:
        return new
    if new == base or local == new:
        return local
    return conflict_marker


_CONFLICT = object()


def _merge_metadata(base: Entry, local: Entry, new: Entry) -> Optional[Entry]:
    """*local* with the metadata of the three merged, or None on a conflict."""
    b, l_, n = base.metadata(), local.metadata(), new.metadata()
    merged = {}
    for key in sorted(set(b) | set(l_) | set(n)):
        value = _three_way(b.get(key), l_.get(key), n.get(key), _CONFLICT)
        if value is _CONFLICT:
            return None
        if value is not None:
            merged[key] = value
    xattrs = tuple((key[6:], merged[key]) for key in sorted(merged) if key.startswith("xattr:"))
    return Entry(local.kind, merged["mode"], merged["uid"], merged["gid"], xattrs, local.body,
                 local.mtime_ns)


def decide(base: Optional[Entry], local: Optional[Entry], new: Optional[Entry],
           texts=None) -> _Decision:
    """The rule table of the module docstring for one path.

    *texts* is called as ``texts()`` for ``(base, local, new)`` bytes when a
    line merge is worth trying; None means "not text".
    """
    if local == base:
        return _Decision(new, "new")
    if new == base or local == new:
        return _Decision(local, "local")
    if local is None:
        return _Decision(None, None, conflict="removed on the device, changed in the release")
    if new is None:
        return _Decision(local, "local", conflict="changed on the device, removed from the release")
    if base is None or local.kind != new.kind or base.kind != local.kind:
        what = "added on both sides" if base is None else "changed kind"
        return _Decision(local, "local", conflict=f"{what}, differently")
    meta = _merge_metadata(base, local, new)
    if meta is None:
        return _Decision(local, "local", conflict="metadata changed on both sides")
    body = _three_way(base.body, local.body, new.body, _CONFLICT)
    if body is not _CONFLICT:
        source = "local" if body == local.body else "new"
        return _Decision(Entry(meta.kind, meta.mode, meta.uid, meta.gid, meta.xattrs, body,
                               (local if source == "local" else new).mtime_ns), source)
    if local.kind != "file":
        return _Decision(local, "local", conflict=f"{local.kind} changed on both sides")
    three = texts() if texts else None
    if three is None:
        return _Decision(local, "local", conflict="binary file changed on both sides")
    merged = merge_lines(*three)
    if merged is None:
        return _Decision(local, "local", conflict="text changed on both sides, overlapping")
    return _Decision(meta, "merged", content=merged)


# -- the line merge -------------------------------------------------------------

def merge_lines(base: bytes, local: bytes, new: bytes) -> Optional[bytes]:
    """diff3: both sides' changes to *base* applied, or None if they overlap."""
    base_lines = base.splitlines(keepends=True)
    hunks = sorted(_hunks(base_lines, local.splitlines(keepends=True), "local")
                   + _hunks(base_lines, new.splitlines(keepends=True), "new"))
    out: List[bytes] = []
    pos = i = 0
    while i < len(hunks):
        group = [hunks[i]]
        low, high = hunks[i][0], hunks[i][1]
        i += 1
        # hunks that overlap or touch the group's base range join it
        while i < len(hunks) and hunks[i][0] <= high:
            group.append(hunks[i])
            high = max(high, hunks[i][1])
            i += 1
        sides = {side for _, _, side, _ in group}
        if len(sides) > 1:
            local_part = _apply(base_lines, low, high, [h for h in group if h[2] == "local"])
            new_part = _apply(base_lines, low, high, [h for h in group if h[2] == "new"])
            if local_part != new_part:
                return None
            replaced = local_part
        else:
            replaced = _apply(base_lines, low, high, group)
        out.extend(base_lines[pos:low])
        out.extend(replaced)
        pos = high
    out.extend(base_lines[pos:])
    return b"".join(out)


def _hunks(base: Sequence[bytes], other: Sequence[bytes], side: str):
    matcher = difflib.SequenceMatcher(None, base, other, autojunk=False)
    return [(i1, i2, side, tuple(other[j1:j2]))
            for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def _apply(base: Sequence[bytes], low: int, high: int, hunks) -> List[bytes]:
    """base[low:high] with one side's (disjoint, sorted) hunks applied."""
    out: List[bytes] = []
    pos = low
    for start, end, _, lines in hunks:
        out.extend(base[pos:start])
        out.extend(lines)
        pos = end
    out.extend(base[pos:high])
    return out


def _is_text(data: bytes) -> bool:
    return len(data) <= TEXT_MERGE_LIMIT and b"\0" not in data


# -- merging and writing ----------------------------------------------------------

def merge_trees(base: Optional[str], local: str, new: str, out: str) -> MergeResult:
    """Write the three-way merge of the trees *base*, *local*, *new* to *out*.

    *out* must not exist; it is created (and written only below itself).
    *base* None means no common ancestor: every difference is a conflict.
    """
    roots = {"base": base, "local": local, "new": new}
    trees = {"base": scan(base) if base else {}, "local": scan(local), "new": scan(new)}
    result = MergeResult()
    decisions: Dict[str, _Decision] = {}
    for path in sorted(set().union(*trees.values()), key=_path_key):
        parent = path.rpartition("/")[0]
        if path and (parent not in decisions or decisions[parent].entry is None
                     or decisions[parent].entry.kind != "dir"):
            # under a path that is no directory in the result: nothing to write,
            # but a release change the device never sees is still a conflict
            b_, n_ = trees["base"].get(path), trees["new"].get(path)
            if n_ is not None and n_ != b_:
                result.conflicts.append(Conflict(path, "changed in the release under a path "
                                                       "the device removed or replaced"))
            continue
        b_, l_, n_ = (trees[s].get(path) for s in ("base", "local", "new"))

        def texts(b_=b_, l_=l_, n_=n_, path=path):
            if not (b_ and b_.kind == "file" and l_.kind == "file" and n_.kind == "file"):
                return None
            three = (_read(base, path), _read(local, path), _read(new, path))
            return three if all(_is_text(t) for t in three) else None

        decision = decide(b_, l_, n_, texts)
        decisions[path] = decision
        if decision.source == "merged":
            result.merged_text.append(path)
        if decision.conflict:
            result.conflicts.append(Conflict(path, decision.conflict))
    if decisions.get("", _Decision(None, None)).entry is None:
        raise MergeError(f"{local}: the merged tree has no top directory")
    _write(out, decisions, roots, trees, result)
    return result


def copy_tree(source: str, out: str) -> None:
    """*source* copied to *out* (which must not exist), with all metadata."""
    tree = scan(source)
    decisions = {path: _Decision(entry, "new") for path, entry in tree.items()}
    _write(out, decisions, {"new": source}, {"new": tree}, MergeResult())


#: a file's bytes, in chunks, by its relative path (see write_tree)
Contents = Callable[[str], Iterable[bytes]]


def write_tree(tree: Tree, contents: Contents, out: str) -> None:
    """*tree* written to *out* (which must not exist) as copy_tree writes a
    scanned one, for a tree read elsewhere than from a directory (the
    release's /etc read from the repository: gitroot.serve.export).
    *contents(path)* yields a file's bytes; a symlink's target is its
    entry's body.  The tree must keep :func:`scan`'s bounds."""
    decisions = {path: _Decision(entry, "new") for path, entry in tree.items()}
    _write(out, decisions, {"new": contents}, {"new": tree}, MergeResult())


def check_xattrs(where: str, xattrs: Sequence[Tuple[str, bytes]]) -> None:
    """MergeError if *xattrs* exceed what one entry may carry."""
    if sum(len(name) + len(value) for name, value in xattrs) > MAX_XATTR_BYTES:
        raise MergeError(f"{where}: more than {MAX_XATTR_BYTES} bytes of xattrs")


def _path_key(path: str):
    return path.split("/") if path else []


def _write(out: str, decisions: Dict[str, _Decision], roots, trees,
           result: MergeResult) -> None:
    try:
        os.mkdir(out, 0o700)
    except OSError as err:
        raise MergeError(f"{out}: {err.strerror}") from None
    writer = _Writer(out)
    try:
        directories: List[Tuple[str, Entry]] = []
        for path in sorted(decisions, key=_path_key):
            decision = decisions[path]
            if decision.entry is None:
                continue
            entry = decision.entry
            if decision.source == "merged":
                writer.file(path, entry, content=decision.content)
            elif entry.kind == "dir":
                if path:
                    writer.mkdir(path)
                directories.append((path, entry))
            else:
                writer.put(path, entry, _source(roots[decision.source], path))
        names = set(decisions)
        for i, conflict in enumerate(result.conflicts):
            result.conflicts[i] = _write_sides(writer, conflict, decisions, names, roots, trees)
        for path, entry in reversed(directories):
            writer.set_metadata(path, entry)
    finally:
        writer.close()


def _write_sides(writer, conflict: Conflict, decisions, names, roots, trees) -> Conflict:
    """FILE.rej (the release's new version) and FILE.orig (base) beside a conflict."""
    path = conflict.path
    parent = path.rpartition("/")[0]
    if parent not in decisions or decisions[parent].entry is None or \
            decisions[parent].entry.kind != "dir":
        return conflict
    written = {}
    for side, suffix in (("new", REJECT_SUFFIX), ("base", ORIGINAL_SUFFIX)):
        entry = trees.get(side, {}).get(path)
        if entry is None or entry.kind not in ("file", "symlink"):
            continue
        name = path + suffix
        taken = decisions[name].entry if name in names else None
        if taken is not None and (taken.kind == "dir" or name in trees.get("new", {})
                                  or name in trees.get("base", {})):
            continue        # a directory, or a name the release itself ships: left alone
        writer.remove(name)     # a leftover .rej/.orig of an earlier conflict
        writer.put(name, entry, _source(roots[side], path))
        written[side] = name
    return Conflict(path, conflict.reason, written.get("new"), written.get("base"))


#: where a written entry's content comes from: a path to copy, or its chunks
_Source = Union[str, Callable[[], Iterable[bytes]]]


def _source(root, path: str) -> _Source:
    """*path* of a tree given as a directory, or as a Contents function."""
    if isinstance(root, str):
        return os.path.join(root, path)
    return lambda: root(path)


class _Writer:
    """Creates entries below one directory through O_NOFOLLOW directory fds."""

    def __init__(self, root: str):
        self.root = root
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def close(self) -> None:
        os.close(self.root_fd)

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[Tuple[int, str]]:
        """(fd of the parent directory, last name), walked without following symlinks."""
        *dirs, name = path.split("/")
        if not name or name in (".", "..") or any(d in ("", ".", "..") for d in dirs):
            raise MergeError(f"refusing the path {path!r}")
        fd = os.dup(self.root_fd)
        try:
            for d in dirs:
                try:
                    next_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as err:
                    raise MergeError(f"{self.root}/{path}: {err.strerror}") from None
                os.close(fd)
                fd = next_fd
            yield fd, name
        finally:
            os.close(fd)

    def _fail(self, path: str, err: OSError):
        return MergeError(f"cannot write {self.root}/{path}: {err.strerror}")

    def mkdir(self, path: str) -> None:
        with self._parent(path) as (fd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except OSError as err:
                raise self._fail(path, err) from None

    def remove(self, path: str) -> None:
        with self._parent(path) as (fd, name):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=fd)

    def put(self, path: str, entry: Entry, source: _Source) -> None:
        """Write one non-directory entry, with *entry*'s metadata; a file's
        bytes come from *source* (a symlink's target is the entry's body,
        read by the scan that made it)."""
        if entry.kind == "file":
            self.file(path, entry, source=source)
            return
        with self._parent(path) as (fd, name):
            try:
                if entry.kind == "symlink":
                    os.symlink(entry.body, name, dir_fd=fd)
                else:
                    fmt, rdev = entry.body
                    os.mknod(name, fmt | 0o600, rdev, dir_fd=fd)
                    os.chmod(name, entry.mode, dir_fd=fd)
                os.chown(name, entry.uid, entry.gid, dir_fd=fd, follow_symlinks=False)
                link = f"/proc/self/fd/{fd}/{name}"
                for key, value in entry.xattrs:
                    os.setxattr(link, key, value, follow_symlinks=False)
                os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=fd,
                         follow_symlinks=False)
            except OSError as err:
                raise self._fail(path, err) from None

    def file(self, path: str, entry: Entry, source: Optional[_Source] = None,
             content: Optional[bytes] = None) -> None:
        with self._parent(path) as (dir_fd, name):
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o600, dir_fd=dir_fd)
            except OSError as err:
                raise self._fail(path, err) from None
            try:
                if content is not None:
                    _write_all(fd, content)
                elif callable(source):
                    for chunk in source():
                        _write_all(fd, chunk)
                else:
                    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
                    try:
                        for chunk in iter(lambda: os.read(src, 1 << 16), b""):
                            _write_all(fd, chunk)
                    finally:
                        os.close(src)
                self._metadata(fd, entry)
                if content is None:
                    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            except OSError as err:
                raise self._fail(path, err) from None
            finally:
                os.close(fd)

    def set_metadata(self, path: str, entry: Entry) -> None:
        try:
            if path:
                with self._parent(path) as (dir_fd, name):
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 dir_fd=dir_fd)
            else:
                fd = os.dup(self.root_fd)
            try:
                self._metadata(fd, entry)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            finally:
                os.close(fd)
        except OSError as err:
            raise self._fail(path, err) from None

    @staticmethod
    def _metadata(fd: int, entry: Entry) -> None:
        # owner before mode: chown clears setuid/setgid bits
        os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
        for key, value in entry.xattrs:
            os.setxattr(fd, key, value)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
