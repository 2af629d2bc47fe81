"""The manifest: everything about a root filesystem that git does not keep.

Git stores names, contents, symlinks and a 644/755 mode.  A booting system
also needs owners, the full mode (setuid, setgid, sticky), nanosecond mtimes,
extended attributes, device nodes, fifos, sockets, empty directories and
hardlinks.  Those live in one text file committed inside the tree at
``MANIFEST_PATH``; docs/manifest.md specifies the format.

This module is pure: bytes in, records out, and back.  It knows nothing of
git or FUSE.  A repository may come from an attacker, so the parser checks
every field and reports the line it rejects; it never trusts a path.

Threading: no shared state; parsed :class:`Manifest` objects are read-only
after construction and safe to share between threads.
"""

import base64
import binascii
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from gitroot.errors import ManifestError

#: Where the manifest lives inside the committed tree (hidden when mounted).
MANIFEST_DIR = b".gitroot"
MANIFEST_NAME = b"manifest"
MANIFEST_PATH = MANIFEST_DIR + b"/" + MANIFEST_NAME

HEADER = b"# gitroot manifest v1"

#: One letter per file type, as in ``find -printf %y``.
KIND_DIR = "d"
KIND_FILE = "f"
KIND_SYMLINK = "l"
KIND_CHAR = "c"
KIND_BLOCK = "b"
KIND_FIFO = "p"
KIND_SOCKET = "s"

KIND_TO_IFMT = {
    KIND_DIR: stat.S_IFDIR,
    KIND_FILE: stat.S_IFREG,
    KIND_SYMLINK: stat.S_IFLNK,
    KIND_CHAR: stat.S_IFCHR,
    KIND_BLOCK: stat.S_IFBLK,
    KIND_FIFO: stat.S_IFIFO,
    KIND_SOCKET: stat.S_IFSOCK,
}
IFMT_TO_KIND = {v: k for k, v in KIND_TO_IFMT.items()}

#: Kinds whose existence git records (a tree, blob or symlink entry).
GIT_KINDS = frozenset((KIND_FILE, KIND_SYMLINK))
#: Kinds only the manifest can create.
SPECIAL_KINDS = frozenset((KIND_CHAR, KIND_BLOCK, KIND_FIFO, KIND_SOCKET))

MAX_ID = 2**32 - 2          # (uid_t)-1 means "no change" to chown; refuse it
MAX_SIZE = 2**63 - 1
MAX_XATTR_VALUE = 65536     # Linux's XATTR_SIZE_MAX
MAX_XATTR_NAME = 255        # Linux's XATTR_NAME_MAX
MAX_DEV_PART = 2**32 - 1
#: Linux's own limits on a device number (12-bit major, 20-bit minor): a
#: device beyond them is accepted in a manifest but served as an I/O error.
LINUX_MAX_MAJOR = 2**12 - 1
LINUX_MAX_MINOR = 2**20 - 1
NAME_MAX = 255              # Linux's longest file name, in bytes
#: The most entries and bytes a manifest may have: a mounted manifest costs
#: the FUSE daemon about 1 KB of memory per entry (docs/performance.md), and
#: the daemon runs in the initramfs of small devices.  A full Debian desktop
#: has ~300,000 entries.
MAX_ENTRIES = 500_000
MAX_MANIFEST_BYTES = 64 << 20
NS = 1_000_000_000

# Bytes kept literal in an escaped path: printable ASCII except the escape
# character itself, space and tab.  Everything else is %XX.
_SAFE = frozenset(range(0x21, 0x7F)) - {ord("%")}
_HEX = b"0123456789ABCDEF"
_MTIME_RE = re.compile(rb"^(-?[0-9]{1,12})\.([0-9]{9})$")
_XATTR_NAME_RE = re.compile(rb"^(security|system|trusted|user)\.[\x21-\x7e]+$")


def escape_path(path: bytes) -> bytes:
    """Escape a path for one manifest field (reversible, ASCII only)."""
    if all(b in _SAFE for b in path):
        return path
    out = bytearray()
    for b in path:
        if b in _SAFE:
            out.append(b)
        else:
            out += b"%" + _HEX[b >> 4:(b >> 4) + 1] + _HEX[b & 15:(b & 15) + 1]
    return bytes(out)


def unescape_path(text: bytes) -> bytes:
    """Inverse of :func:`escape_path`; raises ValueError on a bad escape."""
    if b"%" not in text:
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        b = text[i]
        if b == 0x25:  # %
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in pair):
                raise ValueError("bad %-escape")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return bytes(out)


def check_path(path: bytes) -> None:
    """Refuse a path that could name something outside the tree.

    A valid path is ``.`` (the root) or ``/``-separated components that are
    non-empty, at most NAME_MAX bytes long (no kernel serves a longer name),
    and none of ``.``, ``..`` or containing NUL.
    """
    if path == b".":
        return
    if not path or path.startswith(b"/") or b"\0" in path:
        raise ValueError("not a relative path")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise ValueError("empty, '.' or '..' component")
        if len(part) > NAME_MAX:
            raise ValueError(f"a component longer than {NAME_MAX} bytes")


def parent_of(path: bytes) -> bytes:
    cut = path.rfind(b"/")
    return b"." if cut < 0 else path[:cut]


def sort_key(path: bytes) -> Tuple[bytes, ...]:
    """Depth-first order: a directory, then everything under it."""
    return () if path == b"." else tuple(path.split(b"/"))


# One Entry per manifest line stays in memory while a commit is mounted:
# without a __dict__ each costs ~300 bytes less (dataclass slots: Python 3.10+).
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(frozen=True, **_SLOTS)
class Entry:
    """The metadata of one file system entry."""

    path: bytes                 # relative, b"." for the root
    kind: str                   # one of KIND_*
    mode: int                   # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    mtime_ns: int
    size: Optional[int] = None          # regular files and symlinks
    rdev: Optional[Tuple[int, int]] = None   # (major, minor) for c and b
    hardlink: Optional[bytes] = None    # path of the first link of the group
    xattrs: Tuple[Tuple[bytes, bytes], ...] = ()

    @property
    def st_mode(self) -> int:
        return KIND_TO_IFMT[self.kind] | self.mode


def format_entry(entry: Entry) -> bytes:
    """One manifest line (without the newline)."""
    sec, nsec = divmod(entry.mtime_ns, NS)
    fields = [
        escape_path(entry.path),
        entry.kind.encode(),
        b"%o" % entry.mode,
        b"%d" % entry.uid,
        b"%d" % entry.gid,
        b"%d.%09d" % (sec, nsec),
        b"-" if entry.size is None else b"%d" % entry.size,
    ]
    if entry.rdev is not None:
        fields.append(b"rdev=%d:%d" % entry.rdev)
    if entry.hardlink is not None:
        fields.append(b"hardlink=" + escape_path(entry.hardlink))
    for name, value in sorted(entry.xattrs):
        fields.append(b"xattr." + escape_path(name) + b"=" + base64.b64encode(value))
    return b"\t".join(fields)


def format_manifest(entries: Iterable[Entry]) -> bytes:
    """The manifest file for *entries*, in canonical (depth-first) order."""
    ordered = sorted(entries, key=lambda e: sort_key(e.path))
    lines = [HEADER]
    lines.extend(format_entry(e) for e in ordered)
    return b"\n".join(lines) + b"\n"


def _int_field(text: bytes, what: str, low: int, high: int) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} is not a decimal number")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what} {value} out of range")
    return value


def parse_line(line: bytes) -> Entry:
    """Parse one manifest line; raises ValueError with the reason."""
    fields = line.split(b"\t")
    if len(fields) < 7:
        raise ValueError(f"expected at least 7 tab-separated fields, got {len(fields)}")
    path = unescape_path(fields[0])
    check_path(path)
    try:
        kind = fields[1].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("bad kind") from None
    if kind not in KIND_TO_IFMT:
        raise ValueError(f"unknown kind {kind!r}")
    if not fields[2] or any(c not in b"01234567" for c in fields[2]):
        raise ValueError("mode is not octal")
    mode = int(fields[2], 8)
    if mode > 0o7777:
        raise ValueError(f"mode {fields[2].decode()} has bits beyond 07777")
    uid = _int_field(fields[3], "uid", 0, MAX_ID)
    gid = _int_field(fields[4], "gid", 0, MAX_ID)
    m = _MTIME_RE.match(fields[5])
    if not m:
        raise ValueError("mtime is not SECONDS.NANOSECONDS")
    mtime_ns = int(m.group(1)) * NS + int(m.group(2))
    if fields[6] == b"-":
        size = None
        if kind in GIT_KINDS:
            raise ValueError(f"a {kind!r} entry needs a size")
    else:
        if kind not in GIT_KINDS:
            raise ValueError(f"a {kind!r} entry has no size")
        size = _int_field(fields[6], "size", 0, MAX_SIZE)
    if path == b"." and kind != KIND_DIR:
        raise ValueError("the root must be a directory")
    rdev, hardlink, xattrs = _parse_extras(fields[7:], path)
    if (kind in (KIND_CHAR, KIND_BLOCK)) != (rdev is not None):
        raise ValueError("rdev is required for c and b entries and only for them")
    if hardlink is not None and kind != KIND_FILE:
        raise ValueError("only regular files can be hardlinks")
    return Entry(path, kind, mode, uid, gid, mtime_ns, size, rdev, hardlink,
                 tuple(xattrs))


def _parse_extras(extras: List[bytes], path: bytes):
    """(rdev, hardlink, xattrs) from a line's KEY=VALUE fields after the
    seventh; each key at most once (xattrs once per name)."""
    rdev = None
    hardlink = None
    xattrs: List[Tuple[bytes, bytes]] = []
    for extra in extras:
        key, sep, value = extra.partition(b"=")
        if not sep:
            raise ValueError(f"extra field {extra[:40]!r} is not KEY=VALUE")
        if key == b"rdev" and rdev is None:
            major, sep, minor = value.partition(b":")
            if not sep:
                raise ValueError("rdev is not MAJOR:MINOR")
            rdev = (_int_field(major, "major", 0, MAX_DEV_PART),
                    _int_field(minor, "minor", 0, MAX_DEV_PART))
        elif key == b"hardlink" and hardlink is None:
            hardlink = unescape_path(value)
            check_path(hardlink)
            if hardlink == path:
                raise ValueError("hardlink to itself")
        elif key.startswith(b"xattr."):
            name, data = _parse_xattr(key[6:], value)
            if any(n == name for n, _ in xattrs):
                raise ValueError(f"xattr {name.decode()} given twice")
            xattrs.append((name, data))
        else:
            raise ValueError(f"unknown or repeated field {key[:40]!r}")
    return rdev, hardlink, xattrs


def _parse_xattr(escaped_name: bytes, value: bytes) -> Tuple[bytes, bytes]:
    name = unescape_path(escaped_name)
    if len(name) > MAX_XATTR_NAME or not _XATTR_NAME_RE.match(name):
        raise ValueError(f"bad xattr name {name[:60]!r}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"xattr {name.decode()} is not base64") from None
    if len(data) > MAX_XATTR_VALUE:
        raise ValueError(f"xattr {name.decode()} value too large")
    return name, data


@dataclass
class Manifest:
    """A parsed manifest: entries by path, with stable inode numbers.

    ``inode[path]`` is the entry's position in the (canonical, depth-first)
    file plus one, so the root is inode 1 and numbers are the same at every
    mount of the same commit.  Hardlinked paths share their group's first
    inode; ``nlink[ino]`` is the group size.
    """

    entries: Dict[bytes, Entry] = field(default_factory=dict)
    inode: Dict[bytes, int] = field(default_factory=dict)
    nlink: Dict[int, int] = field(default_factory=dict)
    #: paths of every directory's children, by the directory's path, in order
    children: Dict[bytes, List[bytes]] = field(default_factory=dict)
    #: number of subdirectories, by directory path (a directory's link count
    #: is 2 plus this, as on ext4)
    subdirs: Dict[bytes, int] = field(default_factory=dict)
    #: lines that were rejected: (line number, reason); the paths they named
    #: (when readable) are served as I/O errors
    rejected: List[Tuple[int, str]] = field(default_factory=list)
    poisoned: Dict[bytes, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)


def check_manifest_size(size: int, entries: Optional[int] = None) -> None:
    """Refuse a manifest beyond MAX_MANIFEST_BYTES or MAX_ENTRIES (one line each)."""
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the manifest has {size} bytes, more than the "
                            f"{MAX_MANIFEST_BYTES >> 20} MiB gitroot serves")
    if entries is not None and entries > MAX_ENTRIES:
        raise ManifestError(f"the manifest has {entries} entries, more than the "
                            f"{MAX_ENTRIES} gitroot serves")


def _placement_problem(entries: Dict[bytes, Entry], entry: Entry,
                       parent: Optional[bytes]) -> Optional[str]:
    """Why *entry* cannot join the entries read so far (its parent must be a
    directory before it; a hardlink's leader an earlier, identical file)."""
    if parent is not None:
        parent_entry = entries.get(parent)
        if parent_entry is None or parent_entry.kind != KIND_DIR:
            return "parent is not a directory in the manifest"
    if entry.hardlink is not None:
        leader = entries.get(entry.hardlink)
        if leader is None or leader.kind != KIND_FILE or leader.hardlink is not None:
            return "hardlink target is not an earlier regular file"
        if (leader.size, leader.mode, leader.uid, leader.gid, leader.mtime_ns,
                leader.xattrs) != (entry.size, entry.mode, entry.uid, entry.gid,
                                   entry.mtime_ns, entry.xattrs):
            return "hardlink metadata differs from its target's"
    return None


def parse_manifest(data: bytes, strict: bool = False) -> Manifest:
    """Parse a manifest file.

    A bad header, or a manifest beyond MAX_ENTRIES or MAX_MANIFEST_BYTES,
    is always an error.  A bad line is an error when *strict*;
    otherwise it is recorded in ``rejected`` and, if its path can be read,
    that path is served as an I/O error (``poisoned``), so one hostile line
    cannot take the whole root filesystem down but is never served wrongly.
    """
    check_manifest_size(len(data), data.count(b"\n") - 1)
    lines = data.split(b"\n")
    if not lines or lines[0] != HEADER:
        raise ManifestError("manifest does not start with %r" % HEADER.decode())
    if lines[-1] != b"":
        raise ManifestError("manifest does not end with a newline (truncated?)")
    man = Manifest()
    entries = man.entries
    inode = man.inode
    nlink = man.nlink
    last_key: Tuple[bytes, ...] = ()
    first = True

    def reject(lineno: int, line: bytes, reason: str) -> None:
        if strict:
            raise ManifestError(f"manifest line {lineno}: {reason}")
        man.rejected.append((lineno, reason))
        try:
            path = unescape_path(line.split(b"\t", 1)[0])
            check_path(path)
        except ValueError:
            return
        man.poisoned[path] = f"manifest line {lineno}: {reason}"
        entries.pop(path, None)

    for lineno, line in enumerate(lines[1:-1], start=2):
        try:
            entry = parse_line(line)
        except ValueError as err:
            reject(lineno, line, str(err))
            continue
        path = entry.path
        key = sort_key(path)
        if first:
            if path != b".":
                reject(lineno, line, "the first entry must be the root '.'")
                continue
            first = False
        elif key <= last_key:
            reject(lineno, line, "entries out of order or repeated")
            continue
        last_key = key
        if path in man.poisoned:
            continue
        parent = parent_of(path) if path != b"." else None
        problem = _placement_problem(entries, entry, parent)
        if problem is not None:
            reject(lineno, line, problem)
            continue
        ino = len(inode) + 1
        if entry.hardlink is not None:
            ino = inode[entry.hardlink]
            nlink[ino] = nlink.get(ino, 1) + 1
        entries[path] = entry
        inode[path] = ino
        if parent is not None:
            # the path object itself (shared with entries' key), not a new name
            man.children.setdefault(parent, []).append(path)
            if entry.kind == KIND_DIR:
                man.subdirs[parent] = man.subdirs.get(parent, 0) + 1
    if first:
        raise ManifestError("manifest has no root entry")
    return man
