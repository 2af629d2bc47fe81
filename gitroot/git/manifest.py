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
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

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
#: The most entries and bytes a manifest may have: the FUSE daemon keeps the
#: manifest's bytes while mounted, and about 350 bytes for each entry a walk
#: met, plus libfuse's own (docs/performance.md, "Scale"); it runs in the
#: initramfs of small devices.  A full Debian desktop has ~300,000 entries.
MAX_ENTRIES = 500_000
MAX_MANIFEST_BYTES = 64 << 20
NS = 1_000_000_000

# Bytes kept literal in an escaped path: printable ASCII except the escape
# character itself, space and tab.  Everything else is %XX.
_SAFE = frozenset(range(0x21, 0x7F)) - {ord("%")}
_HEX = b"0123456789ABCDEF"
_MTIME_RE = re.compile(rb"^(-?[0-9]{1,12})\.([0-9]{9})$")
#: what check_path accepts, in one C-speed match for the common case (its
#: loop over the components then only runs to name what is wrong)
_PLAIN_PATH = re.compile(rb"(?:(?!\.\.?/)[^/\0]{1,255}/)*(?!\.\.?\Z)[^/\0]{1,255}")
_KIND_OF = {k.encode(): k for k in "dflcbps"}
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
    if path == b"." or _PLAIN_PATH.fullmatch(path):
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


class Entry(NamedTuple):
    """The metadata of one file system entry.

    A NamedTuple, not a frozen dataclass: the mount parses a line for every
    entry a walk meets, and a frozen dataclass's __init__ (one
    object.__setattr__ per field) was a fifth of that (docs/performance.md,
    "Scale")."""

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
    kind = _KIND_OF.get(fields[1])
    if kind is None:
        try:
            raise ValueError(f"unknown kind {fields[1].decode('ascii')!r}")
        except UnicodeDecodeError:
            raise ValueError("bad kind") from None
    if not fields[2] or fields[2].translate(None, b"01234567"):
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
    if len(fields) == 7:        # no extras: most lines
        if kind == KIND_CHAR or kind == KIND_BLOCK:
            raise ValueError("rdev is required for c and b entries and only for them")
        return Entry(path, kind, mode, uid, gid, mtime_ns, size)
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
    """A manifest parsed whole: entries by path, with stable inode numbers.

    What ``gitroot diff`` and the tests read; the mount uses
    :class:`ManifestIndex`, which parses a directory's lines only when the
    directory is first listed.  Both follow the same rules, because this is
    built by listing every directory of the index.

    ``inode[path]`` is the entry's line number minus one, so the root (the
    first entry, on line 2) is inode 1 and numbers are the same at every
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


# -- the index the mount uses ----------------------------------------------------
#
# A sort key is a path with each "/" turned into NUL, which no name holds and
# which sorts before every other byte: plain bytes order of keys is then the
# manifest's depth-first order (sort_key's), and a directory's whole subtree
# is the one range of keys that start with its key and a NUL.  A binary
# search over the lines finds it, so no per-directory table is needed, and
# the keys themselves are not kept (5 MB at 100,000 entries): a line's key
# is made again from its path field when the search looks at it.

_SLASH_TO_NUL = bytes.maketrans(b"/", b"\0")
ROOT_KEY = b""
_MISSING = object()

#: A line's verdict: its entry, or the reason it was rejected.
Verdict = Union[Entry, str]


def path_key(path: bytes) -> bytes:
    """The sort key of a (checked, unescaped) path."""
    return ROOT_KEY if path == b"." else path.translate(_SLASH_TO_NUL)


_PATH_FIELD = re.compile(rb"[^\t\n]*")
_SIZE_FIELD = re.compile(rb"^(?:[^\t\n]*\t){6}([0-9]{1,19})(?=[\t\n])", re.M)


def _field_key(field: bytes) -> bytes:
    """The sort key of an escaped path field; ValueError if unreadable."""
    if b"%" in field or b"\0" in field or not field:
        path = unescape_path(field)
        if not path or b"\0" in path:
            raise ValueError("not a relative path")
        return path_key(path)
    return ROOT_KEY if field == b"." else field.translate(_SLASH_TO_NUL)


class ManifestIndex:
    """A manifest with one scan done: where every line is, in key order.

    At mount only what must be known of the whole file is worked out (the
    header, the caps, the order of the paths, the root's entry, how many
    directories each directory holds); a line itself is parsed and checked
    when :meth:`listing` is asked for its directory (or for every
    directory by :meth:`parse_all`, which the mount calls for a small
    manifest), which is what keeps mount time and memory low for 100,000
    entries (docs/performance.md, "Scale").  The rules are those of
    docs/manifest.md, checked lazily:

    - a line whose path cannot be read, that comes before the root, or
      whose path is not after the previous accepted one is rejected by the
      scan (and logged at once);
    - any other bad line is rejected when its directory is listed (logged
      then, once): a line that does not parse, whose parent has no accepted
      directory line, or whose hardlink does not name an earlier, identical
      regular file.

    A rejected line whose path can be read makes that path an I/O error
    (*listing* returns the reason instead of an entry).  *on_reject* is
    called once per rejected line, with its number and reason; *strict*
    raises ManifestError instead.  Lines below a name that has no accepted
    directory line are checked by that name's own listing, if the tree
    has a directory there, unless *every_line* (parse_manifest) asks for
    them in the listing above.

    Memory: the file's bytes, one offset per line, the
    parsed directory entries that :meth:`directory` has checked, the line
    ranges of directories listed by their parent but not yet themselves,
    and the listings :meth:`parse_all` made that were not yet handed out.

    Threading: listing fills caches with single dict assignments of
    complete values; meant for one thread (the FUSE daemon's).
    """

    def __init__(self, data: bytes, strict: bool = False,
                 on_reject: Optional[Callable[[int, str], None]] = None,
                 every_line: bool = False):
        check_manifest_size(len(data), data.count(b"\n") - 1)
        lines = data.split(b"\n")
        if lines[0] != HEADER:
            raise ManifestError("manifest does not start with %r" % HEADER.decode())
        if lines[-1] != b"":
            raise ManifestError("manifest does not end with a newline (truncated?)")
        self._data = data
        self._strict = strict
        self._on_reject = on_reject
        self._every_line = every_line
        #: rejected lines so far: line number -> reason
        self.rejected: Dict[int, str] = {}
        #: paths served as I/O errors because a line naming them was rejected
        self.poisoned: Dict[bytes, str] = {}
        self._poisoned_under: Dict[bytes, Dict[bytes, str]] = {}
        self._scan(lines)
        del lines
        self._dirs: Dict[bytes, Optional[Verdict]] = {}
        #: line range [lo, hi) of a directory's subtree, packed lo << 32 | hi,
        #: found by its parent's listing and popped by its own (see listing)
        self._ranges: Dict[bytes, int] = {}
        #: listings made ahead by parse_all, popped by listing
        self._ahead: Dict[bytes, List[Tuple[bytes, Verdict, int]]] = {}
        self._nlink: Optional[Dict[int, int]] = None
        root = self._accept(0)
        if isinstance(root, str):
            raise ManifestError(f"manifest line {self.lineno(0)}: the root entry "
                                f"is rejected: {root}")
        self.root = root
        self._dirs[b"."] = root

    def _scan(self, lines: List[bytes]) -> None:
        """Sort keys and offsets of the lines in order; the rest rejected.

        The one loop over every line at mount: it does as little per line as
        it can (~0.4 us), since its cost is mount time for every boot."""
        starts = array("I")        # offsets below MAX_MANIFEST_BYTES < 2**32
        linenos: Optional[array] = None   # only once a line was rejected
        dir_keys: List[bytes] = []
        offset = len(lines[0]) + 1
        last: Optional[bytes] = None
        for lineno, line in enumerate(lines[1:-1], start=2):
            start = offset
            offset += len(line) + 1
            path_field, _, rest = line.partition(b"\t")
            if b"%" in path_field or b"\0" in path_field or not path_field:
                try:
                    key = _field_key(path_field)
                except ValueError as err:
                    linenos = self._scan_reject(lineno, None, str(err), starts, linenos)
                    continue
            elif path_field == b".":
                key = ROOT_KEY
            else:           # _field_key's common case, inline (no call per line)
                key = path_field.translate(_SLASH_TO_NUL)
            if last is None:
                if key != ROOT_KEY:
                    linenos = self._scan_reject(lineno, key, "the first entry must be "
                                                "the root '.'", starts, linenos)
                    continue
            elif key <= last:
                linenos = self._scan_reject(lineno, key, "entries out of order or repeated",
                                            starts, linenos)
                continue
            last = key
            starts.append(start)
            if linenos is not None:
                linenos.append(lineno)
            if rest[:2] == b"d\t":
                dir_keys.append(key)
        if last is None:
            raise ManifestError("manifest has no root entry")
        self._starts = starts
        self._linenos = linenos
        subdirs: Dict[bytes, int] = {}
        for key in dir_keys[1:]:            # the first is the root's
            cut = key.rfind(b"\0")
            parent = key[:cut] if cut >= 0 else ROOT_KEY
            subdirs[parent] = subdirs.get(parent, 0) + 1
        self._subdirs = subdirs

    def _scan_reject(self, lineno: int, key: Optional[bytes], reason: str,
                     accepted: array, linenos: Optional[array]) -> array:
        if linenos is None:
            # every line before this one was accepted, in a row
            linenos = array("I", range(2, 2 + len(accepted)))
        self._reject(lineno, reason, None if key is None or key == ROOT_KEY
                     else key.replace(b"\0", b"/"))
        return linenos

    def _reject(self, lineno: int, reason: str, path: Optional[bytes]) -> None:
        if self._strict:
            raise ManifestError(f"manifest line {lineno}: {reason}")
        if lineno in self.rejected:
            return
        self.rejected[lineno] = reason
        if self._on_reject is not None:
            self._on_reject(lineno, reason)
        if path is None:
            return
        try:
            check_path(path)
        except ValueError:
            return
        why = f"manifest line {lineno}: {reason}"
        self.poisoned.setdefault(path, why)
        cut = path.rfind(b"/")
        parent, name = (b".", path) if cut < 0 else (path[:cut], path[cut + 1:])
        self._poisoned_under.setdefault(parent, {}).setdefault(name, why)

    # -- lines -----------------------------------------------------------

    def __len__(self) -> int:
        """Lines the scan accepted (entries, for statfs)."""
        return len(self._starts)

    def lineno(self, i: int) -> int:
        return i + 2 if self._linenos is None else self._linenos[i]

    def _line(self, i: int) -> bytes:
        start = self._starts[i]
        return self._data[start:self._data.index(b"\n", start)]

    def _find(self, path: bytes) -> Optional[int]:
        key = path_key(path)
        i = self._search(key, 0, len(self._starts))
        return i if i < len(self._starts) and self._key(i) == key else None

    def _key(self, i: int) -> bytes:
        """Line *i*'s sort key (the scan accepted it, so it can be read)."""
        return _field_key(_PATH_FIELD.match(self._data, self._starts[i]).group())

    def _search(self, key: bytes, lo: int, hi: int) -> int:
        """The first line in [lo, hi) whose key is not below *key* (bisect_left)."""
        line_key = self._key
        while lo < hi:
            mid = (lo + hi) // 2
            if line_key(mid) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _skip(self, bound: bytes, lo: int, hi: int) -> int:
        """_search from *lo* by galloping: the subtree a listing skips is
        usually a few lines, which this finds in ~2 log2(lines) keys where a
        bisection of the whole directory's range took ~log2(range)."""
        step = 1
        while True:
            probe = lo + step - 1
            if probe >= hi:
                return self._search(bound, lo, hi)
            if self._key(probe) >= bound:
                return self._search(bound, lo, probe)
            lo = probe + 1
            step <<= 1

    def _accept(self, i: int, follow: bool = True) -> Verdict:
        """Line *i*'s entry, or why it is rejected (nothing is logged here)."""
        try:
            entry = parse_line(self._line(i))
        except ValueError as err:
            return str(err)
        path = entry.path
        if path in self.poisoned:
            return "its path is that of a rejected line"
        if path != b".":
            parent = self.directory(parent_of(path))
            if not isinstance(parent, Entry) or parent.kind != KIND_DIR:
                return "parent is not a directory in the manifest"
        if entry.hardlink is not None and follow:
            j = self._find(entry.hardlink)
            leader = self._accept(j, follow=False) if j is not None and j < i else None
            if (not isinstance(leader, Entry) or leader.kind != KIND_FILE
                    or leader.hardlink is not None):
                return "hardlink target is not an earlier regular file"
            if (leader.size, leader.mode, leader.uid, leader.gid, leader.mtime_ns,
                    leader.xattrs) != (entry.size, entry.mode, entry.uid, entry.gid,
                                       entry.mtime_ns, entry.xattrs):
                return "hardlink metadata differs from its target's"
        return entry

    def directory(self, path: bytes) -> Optional[Verdict]:
        """The verdict on the line of *path* (None: no line), remembered:
        what a line below it is checked against.  Ancestors are worked out
        from the top down, so a deep path costs no deep recursion."""
        dirs = self._dirs
        found = dirs.get(path, _MISSING)
        if found is not _MISSING:
            return found
        chain = [path]
        up = parent_of(path)
        while up not in dirs:
            chain.append(up)
            up = parent_of(up)
        for p in reversed(chain):
            parent = dirs[parent_of(p)]
            verdict: Optional[Verdict] = None
            if isinstance(parent, Entry) and parent.kind == KIND_DIR:
                i = self._find(p)
                if i is not None:
                    verdict = self._accept(i)
            dirs[p] = verdict
        return dirs[path]

    # -- what the view asks ----------------------------------------------

    def listing(self, path: bytes) -> List[Tuple[bytes, Verdict, int]]:
        """(name, entry or the reason it is an I/O error, inode) for each
        line directly in the directory *path*, in name order.

        A line is parsed by the listing of its own directory only: the
        subtree of a child directory line is skipped in one jump, and so is
        what lies below a name that has no accepted directory line (with
        *every_line*, those lines are rejected here instead), so a hostile
        tree of nested directories cannot make a line cost once per level."""
        ahead = self._ahead.pop(path, None)
        if ahead is not None:
            return ahead
        if path == b".":
            prefix = ROOT_KEY
            lo, hi = 1, len(self._starts)
        else:
            own = path_key(path)
            prefix = own + b"\0"
            known = self._ranges.pop(path, None)
            if known is not None:
                lo, hi = known >> 32, known & 0xFFFFFFFF
            else:
                lo = self._search(prefix, 0, len(self._starts))
                hi = self._search(own + b"\x01", lo, len(self._starts))
        poisoned = dict(self._poisoned_under.get(path, ()))
        cut = len(prefix)
        out: List[Tuple[bytes, Verdict, int]] = []
        i = lo
        while i < hi:
            key = self._key(i)
            child_end = key.find(b"\0", cut)
            direct = child_end < 0
            if not direct and not self._every_line:
                i = self._skip(key[:child_end] + b"\x01", i + 1, hi)
                continue
            verdict: Verdict
            if direct and key[cut:] in poisoned:
                verdict = poisoned.pop(key[cut:])
            else:
                verdict = self._accept(i)
                if isinstance(verdict, Entry) and not direct:
                    # only reached below a child that is no directory line
                    verdict = "parent is not a directory in the manifest"
                if isinstance(verdict, str):
                    lineno = self.lineno(i)
                    self._reject(lineno, verdict, key.replace(b"\0", b"/"))
                    verdict = f"manifest line {lineno}: {verdict}"
            if direct:
                out.append((key[cut:], verdict, self._inode(i, verdict)))
                if isinstance(verdict, Entry) and verdict.kind == KIND_DIR:
                    # Its subtree is skipped here; its range and verdict are
                    # kept for its own listing, which comes next in a walk
                    # (a node exists only once its parent was listed): two
                    # searches and a parse of its line fewer per directory.
                    # With the galloping skip, the view's first walk of the
                    # Debian minbase root (8,350 lines, in-process, no FUSE)
                    # took 73 ms of CPU instead of 106 (docs/performance.md,
                    # "Winning back the first cold walk").
                    end = self._skip(key + b"\x01", i + 1, hi)
                    self._ranges[verdict.path] = (i + 1) << 32 | end
                    self._dirs[verdict.path] = verdict
                    i = end
                    continue
            i += 1
        for name, why in poisoned.items():
            out.append((name, why, 0))
        return out

    def parse_all(self) -> None:
        """Make the listing of every directory line now, for :meth:`listing`
        to hand out (once each): what a small manifest costs at mount
        instead of in a first walk (see gitroot.serve.vfs.PARSE_AT_MOUNT).
        Lines below a name without an accepted directory line are left to
        that name's own listing, as without this."""
        pending = [b"."]
        while pending:
            path = pending.pop()
            listed = self.listing(path)
            self._ahead[path] = listed
            pending.extend(verdict.path for _, verdict, _ in listed
                           if isinstance(verdict, Entry) and verdict.kind == KIND_DIR)
        if self._nlink is None:
            self._nlink = self.hardlink_counts()

    def _inode(self, i: int, verdict: Verdict) -> int:
        if isinstance(verdict, Entry) and verdict.hardlink is not None:
            i = self._find(verdict.hardlink)
        return self.lineno(i) - 1

    def subdirs(self, path: bytes) -> int:
        """Directory lines directly below *path* (its link count is 2 plus this)."""
        return self._subdirs.get(path_key(path), 0)

    def nlink(self, ino: int) -> int:
        """Names of the file with inode *ino*: 1 but for a hardlink group.
        The groups are counted once, at the first call: each ``hardlink=``
        line is found with bytes.find and checked."""
        if self._nlink is None:
            self._nlink = self.hardlink_counts()
        return self._nlink.get(ino, 1)

    def hardlink_counts(self) -> Dict[int, int]:
        counts: Dict[int, int] = {}
        data = self._data
        starts = self._starts
        marker = b"\thardlink="
        at = data.find(marker)
        while at >= 0:
            start = data.rfind(b"\n", 0, at) + 1
            i = bisect_left(starts, start)
            if i < len(starts) and starts[i] == start:
                entry = self._accept(i)
                if isinstance(entry, Entry) and entry.hardlink is not None:
                    ino = self._inode(i, entry)
                    counts[ino] = counts.get(ino, 1) + 1
            at = data.find(marker, data.index(b"\n", at))
        return counts

    def total_size(self) -> int:
        """The size fields of every line added up, for statfs (one regular
        expression over the file, at C speed: a loop over 100,000 lines
        cost ~0.3 s; a rejected line's size counts too)."""
        return sum(map(int, _SIZE_FIELD.findall(self._data)))


def parse_manifest(data: bytes, strict: bool = False) -> Manifest:
    """Parse a manifest file whole (every directory of a ManifestIndex).

    A bad header, or a manifest beyond MAX_ENTRIES or MAX_MANIFEST_BYTES,
    is always an error.  A bad line is an error when *strict*;
    otherwise it is recorded in ``rejected`` and, if its path can be read,
    that path is served as an I/O error (``poisoned``), so one hostile line
    cannot take the whole root filesystem down but is never served wrongly.
    """
    index = ManifestIndex(data, strict=strict, every_line=True)
    man = Manifest()
    man.entries[b"."] = index.root
    man.inode[b"."] = index.lineno(0) - 1
    stack = [(b".", iter(index.listing(b".")))]
    while stack:
        parent, listed = stack[-1]
        for name, verdict, ino in listed:
            if isinstance(verdict, str):
                continue
            path = name if parent == b"." else parent + b"/" + name
            man.entries[path] = verdict
            man.inode[path] = ino
            man.children.setdefault(parent, []).append(path)
            if verdict.kind == KIND_DIR:
                man.subdirs[parent] = man.subdirs.get(parent, 0) + 1
                stack.append((path, iter(index.listing(path))))
                break
        else:
            stack.pop()
    man.nlink = index.hardlink_counts()
    man.rejected = sorted(index.rejected.items())
    man.poisoned = dict(index.poisoned)
    return man
