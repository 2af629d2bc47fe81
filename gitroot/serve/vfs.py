"""A git commit as a read-only filesystem view, with its manifest applied.

This is the core the FUSE adapter (``gitroot.serve.fusefs``) passes paths to; it
has no FUSE in it and is tested without a mount.  Paths are ``bytes``
relative to the root, ``b"."`` for the root itself.

What it guarantees, for a repository that may come from an attacker:

- Names are taken from raw tree objects.  An entry named ``.``, ``..``,
  ``.git``, empty, or containing ``/`` is never served (it is logged and
  left out), so no path can escape the tree.  A name given twice in one tree
  is served as an I/O error.
- Every object is read through libgit2 with strict hash verification, so a
  blob is served only if its bytes hash to its id; a missing or corrupt
  object makes that one entry an I/O error (:class:`EntryError`), logged once.
- The manifest (``.gitroot/manifest``) is hidden.  Where it disagrees with
  the tree (a file it names that the tree lacks, a kind or size that does
  not match, a rejected line) the entry is an I/O error, never served wrong.

Directories are loaded lazily, the first time a path under them is looked
up, and so are the manifest lines of a large manifest
(``gitroot.git.manifest.ManifestIndex``): mounting costs one scan of it,
and memory grows with what was looked at, in compact nodes.  A small
manifest (PARSE_AT_MOUNT) is parsed whole at mount, where it costs less
than in a first walk.

Threading: meant for one thread (the adapter runs FUSE single-threaded).
Lazy loading only ever adds complete, immutable nodes with single dict
assignments, so concurrent callers under the GIL at worst load a directory
twice and never observe a half-built one.  The read-ahead threads
(:meth:`RootView.enable_readahead`) call only ``_load_ahead``, which reads
the object files' locator and builds new objects, nothing the loop
changes.
"""

import hashlib
import logging
import os
import platform
import zlib
from typing import Dict, Iterator, List, Optional, Tuple

import pygit2

from gitroot.git import objects as go
from gitroot.git import manifest as mf
from gitroot.git.blobstream import BlobStreamError, ObjectFiles, StreamedBlob
# imported here, not where used: the initramfs hook copies what the boot
# path has imported (hooks/gitroot)
from gitroot.git.rawodb import open_odb
from gitroot.serve import elfdeps
from gitroot.serve.readahead import Readahead
from gitroot.errors import CorruptObjectError, ManifestError, RepositoryError
from gitroot.git.release import read_manifest_bytes, read_object
from gitroot.git.repository import resolve_commit

log = logging.getLogger(__name__)

BLOCK = 512

# The daemon's memory for file contents is bounded whatever the release
# holds (docs/performance.md, "Memory"):
#: blobs stored whole and larger than this are streamed (gitroot.git.blobstream);
#: smaller ones are inflated whole.  An executable or a library is read
#: where its pages fault, out of order: streamed, every read inflated from
#: the checkpoint before it again (python3.11's 6.6 MB binary: 27 ms to
#: verify, then 45 ms for 54 reads of 128 KiB at random places, against
#: 35 ms for libgit2 to read it whole and nothing after)
STREAM_ABOVE = 16 << 20
OUT_OF_ORDER = 1 << 63          # a kept blob read out of order (read_node)
#: bytes of small blobs kept between reads (see read_file)
RECENT_BYTES = 16 << 20
#: streamed blobs kept (their checkpoints, at most ~2.6 MB each)
RECENT_STREAMS = 2
#: what a streamed blob read ahead is counted as until taken (its checkpoints)
STREAM_HELD = 64 * 40 << 10
#: a blob stored as a delta must be inflated whole; above this it is refused
#: (git itself never stores a delta for a blob over core.bigFileThreshold,
#: 512 MiB by default)
MAX_WHOLE = 512 << 20
#: A manifest of at most this many lines is parsed whole at mount
#: (ManifestIndex.parse_all), a longer one directory by directory as a
#: walk first lists them.  Parsed lazily, the 8,350 lines of a Debian
#: minbase root made the first cold walk 1.31x slower (197 against 150 ms,
#: docs/performance.md, "Winning back the first cold walk"); parsed at
#: mount, the view's CPU time for mounting and a first walk is 48 + 27 ms
#: against 8 + 73 ms lazily (in-process), and the walk through FUSE took
#: 131 against 169 ms (fastest of 5).  The parse costs ~4.8 us a line, so
#: 12,000 lines (~56 ms) is what the 0.2 s target for mount to first stat
#: has room for above the 0.144 s it takes without it; at 100,000 lines
#: (~0.5 s) only the lazy parse meets the scale target (0.5 s to first stat).
PARSE_AT_MOUNT = 12_000
#: Read ahead (gitroot.serve.readahead): at most this many files, and
#: this many bytes, past the one a reader going through a directory in
#: order has reached.
READ_AHEAD_FILES = 32
READ_AHEAD_DIRS = 64
AHEAD_BYTES = 8 << 20
#: Libraries read ahead (_elf_first_read): where the dynamic loader looks
#: for a name when the executable does not say (Debian's multiarch
#: directories first, as its ld.so.conf lists them), how many symlinks a
#: path may go through (the kernel's own limit), how many ELF files are
#: remembered as read (past that, libraries are no longer read ahead)
_TRIPLET = {"x86_64": b"x86_64-linux-gnu", "aarch64": b"aarch64-linux-gnu"}.get(
    platform.machine(), b"")
LIBRARY_DIRS = ([b"/lib/" + _TRIPLET, b"/usr/lib/" + _TRIPLET] if _TRIPLET else []) + [
    b"/lib64", b"/usr/lib64", b"/lib", b"/usr/lib"]
MAX_SYMLINKS = 40
ELF_SEEN_MAX = 65536
#: bounds on what one ELF file's first read may cost the loop, whatever a
#: hostile release names: libraries looked for (elfdeps caps the runpath
#: at 8 directories, so at most 16 x 14 paths), path components walked
#: per path (symlinks included)
LIBRARIES_PER_FILE = 16
MAX_RESOLVE_STEPS = 256
ELF_MAGIC = b"\x7fELF"
PATH_MAX = 4096      # Linux's longest symlink target
HIGH_INO = 1 << 62   # inodes of entries the manifest lacks (see _fallback_ino)


class EntryError(Exception):
    """This entry cannot be served; the adapter answers EIO."""


#: A node's attributes: (st_mode, st_ino, st_nlink, st_uid, st_gid, st_size,
#: st_rdev, mtime_ns); atime and ctime are mtime, st_blocks follows from
#: st_size.  A tuple, not a dict: a dict per entry was half the daemon's
#: memory after a walk of 100,000 entries (docs/performance.md).
Stat = Tuple[int, int, int, int, int, int, int, int]
ST_SIZE = 5
BLKSIZE = 4096


def stat_dict(st: Stat) -> dict:
    """*st* as the os.stat-like dict tools and tests read."""
    mode, ino, nlink, uid, gid, size, rdev, mtime = st
    return {
        "st_mode": mode, "st_ino": ino, "st_nlink": nlink,
        "st_uid": uid, "st_gid": gid, "st_size": size, "st_rdev": rdev,
        "st_atime": mtime, "st_mtime": mtime, "st_ctime": mtime,
        "st_blocks": (size + BLOCK - 1) // BLOCK, "st_blksize": BLKSIZE,
    }


class Node:
    """One entry: attributes ready for stat, plus where its content lives."""

    # One node per entry a walk met stays in memory while mounted, so it is
    # kept small (docs/performance.md, "Scale": ~260 bytes an entry less
    # than a node with a Stat tuple, a path and the manifest's Entry): the
    # attributes are slots (``stat`` builds the tuple when asked), of the
    # manifest's Entry only the xattrs stay (usually the one shared ()),
    # and what only some kinds need is kept by those kinds' subclasses
    # (a directory its path and children, a symlink its target, a device
    # its kind and number, an error node its reason); the class attributes
    # answer for the others.  This class itself is a regular file's node.
    __slots__ = ("oid", "st_mode", "st_ino", "st_nlink", "st_uid", "st_gid",
                 "st_size", "st_mtime", "xattrs")
    kind: str = mf.KIND_FILE
    st_rdev: int = 0
    path: Optional[bytes] = None        # directories only
    children: Optional[Dict[bytes, "Node"]] = None   # directories, once loaded
    target: Optional[bytes] = None      # symlinks, once read
    error: Optional[str] = None         # set: this entry is served as an I/O error

    def __init__(self, oid: Optional[bytes], stat: Optional[Stat],
                 xattrs: Tuple[Tuple[bytes, bytes], ...] = ()):
        self.oid = oid              # raw 20 bytes: blob (f, l) or tree (d); None otherwise
        (self.st_mode, self.st_ino, self.st_nlink, self.st_uid, self.st_gid,
         self.st_size, _rdev, self.st_mtime) = stat or _NO_STAT
        self.xattrs = xattrs        # from the manifest

    @property
    def stat(self) -> Optional[Stat]:
        """See Stat; None for an error node.  Its st_size is what a blob's
        length is checked against."""
        if self.error is not None:
            return None
        return (self.st_mode, self.st_ino, self.st_nlink, self.st_uid, self.st_gid,
                self.st_size, self.st_rdev, self.st_mtime)

    @property
    def attrs(self) -> Optional[dict]:
        """The stat dict (built on each call; the adapter uses .stat)."""
        return stat_dict(self.stat) if self.stat is not None else None


class DirNode(Node):
    __slots__ = ("path", "children")
    kind = mf.KIND_DIR

    def __init__(self, path: bytes, oid: Optional[bytes], stat: Stat,
                 xattrs: Tuple[Tuple[bytes, bytes], ...] = ()):
        super().__init__(oid, stat, xattrs)
        self.path = path            # what its children are loaded by
        self.children = None


class SymlinkNode(Node):
    __slots__ = ("target",)
    kind = mf.KIND_SYMLINK

    def __init__(self, oid: Optional[bytes], stat: Stat,
                 xattrs: Tuple[Tuple[bytes, bytes], ...] = ()):
        super().__init__(oid, stat, xattrs)
        self.target = None


class SpecialNode(Node):
    """A device, fifo or socket (the manifest alone makes them)."""

    __slots__ = ("kind", "st_rdev")

    def __init__(self, kind: str, stat: Stat, xattrs: Tuple[Tuple[bytes, bytes], ...] = ()):
        super().__init__(None, stat, xattrs)
        self.kind = kind
        self.st_rdev = stat[6]


class ErrorNode(Node):
    __slots__ = ("error",)
    kind = "?"

    def __init__(self, reason: str):
        super().__init__(None, None)
        self.error = reason


_NO_STAT = (0,) * 8
_IFMT = mf.KIND_TO_IFMT


def _held_ahead(node: Node) -> int:
    """What a blob read ahead holds until taken: its bytes, or over
    STREAM_ABOVE a stream's checkpoints."""
    return node.st_size if node.st_size <= STREAM_ABOVE else STREAM_HELD


def _fallback_ino(path: bytes) -> int:
    # Stable across mounts and far above manifest positions.
    return HIGH_INO | int.from_bytes(hashlib.blake2b(path, digest_size=8).digest(), "big") >> 2


class RootView:
    """The filesystem view of one commit."""

    def __init__(self, repo: pygit2.Repository, rev: str):
        self.repo = repo
        self.odb = repo.odb
        commit = resolve_commit(repo, rev)
        self.commit_id = str(commit.id)
        self.commit_time_ns = commit.commit_time * 1_000_000_000
        root_tree = _raw(commit.tree_id)
        self._files = ObjectFiles(repo.path)
        #: one int object per distinct mode, uid and gid (28 bytes an entry each)
        self._shared_ints: Dict[int, int] = {}
        self.manifest = self._load_manifest(root_tree)
        if len(self.manifest) <= PARSE_AT_MOUNT:
            self.manifest.parse_all()
        self.root = self._make_node(b".", mf.KIND_DIR, root_tree, self.manifest.root,
                                    self.manifest.lineno(0) - 1)
        self._logged: set = set()
        # path -> (blob, where the last read ended, or OUT_OF_ORDER), oldest first
        self._recent: Dict[bytes, Tuple[bytes, int]] = {}
        self._recent_bytes = 0
        self._streams: Dict[bytes, StreamedBlob] = {}   # oid -> stream, oldest first
        self._statfs: Optional[dict] = None
        self._ahead = None          # a serve.readahead.Readahead, once enabled
        # read ahead (_first_read): the last first read (directory, its
        # number among the directory's files, how many in a row before it);
        # the blobs asked for last; the last few listings, by directory
        self._sequence: Tuple[Optional[bytes], int, int] = (None, -1, 0)
        self._predicted: Dict[bytes, int] = {}
        self._orders: Dict[bytes, Tuple[list, dict, list]] = {}
        # the blobs first read as ELF files, or asked for as libraries
        # (_elf_first_read), at most ELF_SEEN_MAX; None: libraries off
        self._elf_seen: Optional[set] = set()

    def enable_readahead(self, threads: int = 2, libraries: bool = True) -> bool:
        """Read the next blobs of a tree read in order in *threads* other
        threads (gitroot.serve.readahead), and with *libraries* those an
        executable needs (_elf_first_read); the daemon calls this, tests
        and tools leave it off.  False if libgit2 cannot be used that way
        here."""
        if not libraries:
            self._elf_seen = None
        first = open_odb(self.repo, bytes.fromhex(self.commit_id))
        if first is None:
            return False
        readers = [first] + [first.another() for _ in range(threads - 1)]
        self._ahead = Readahead(readers, self._load_ahead, AHEAD_BYTES)
        return True

    def _load_ahead(self, reader, oid: bytes, size: int):
        """Readahead's loader, in a worker thread: the blob's bytes through
        *reader* (a gitroot.git.rawodb.RawOdb), or one over STREAM_ABOVE as
        a verified StreamedBlob; None for anything else (not the size
        expected, a delta too large to stream, unreadable): the loop reads
        that one itself, and says why."""
        where = self._files.locate(oid)
        if where is None or where.size != size:
            return None
        if size > STREAM_ABOVE:
            if where.delta:
                return None
            stream = StreamedBlob(oid, where)
            stream.verify()
            return stream
        got = reader.read(oid)
        if got is None or got[0] != go.OBJ_BLOB or len(got[1]) != size:
            return None
        return got[1]

    def close(self) -> None:
        if self._ahead is not None:
            log.info("read-ahead across files: %d blobs served", self._ahead.served)
            self._ahead.close()
            self._ahead = None

    # -- loading ---------------------------------------------------------

    def _read(self, oid: bytes, want: int, what: str) -> bytes:
        return read_object(self.odb, oid, want, what)

    def _stored_size(self, oid: bytes) -> Optional[int]:
        where = self._files.locate(oid)
        return where.size if where is not None else None

    def _load_manifest(self, root_tree: bytes) -> mf.ManifestIndex:
        where = f"commit {self.commit_id[:12]}"

        def rejected(lineno: int, reason: str) -> None:
            log.error("%s: manifest line %d rejected: %s", where, lineno, reason)

        # the manifest's size is checked before it is inflated (MAX_MANIFEST_BYTES);
        # its lines are parsed directory by directory, as they are loaded
        return mf.ManifestIndex(read_manifest_bytes(self.odb, root_tree, where,
                                                    size_of=self._stored_size),
                                on_reject=rejected)

    def _make_node(self, path: bytes, kind: str, oid: Optional[bytes],
                   entry: Optional[mf.Entry], ino: int = 0, git_mode: int = 0) -> Node:
        xattrs: Tuple[Tuple[bytes, bytes], ...] = ()
        if entry is not None:
            # unpacked at once: one node per entry a walk meets
            _, entry_kind, perm, uid, gid, mtime, size, rdev_pair, _, xattrs = entry
            mode = _IFMT[entry_kind] | perm
            size = size or 0
            nlink = self.manifest.nlink(ino) if kind == mf.KIND_FILE else 1
            rdev = _device_number(rdev_pair) if rdev_pair else 0
        else:
            # Not in the manifest (e.g. committed with plain git): git's own view.
            perm = {mf.KIND_DIR: 0o755, mf.KIND_SYMLINK: 0o777}.get(
                kind, 0o755 if git_mode == go.MODE_EXEC else 0o644)
            mode = mf.KIND_TO_IFMT[kind] | perm
            uid = gid = 0
            mtime = self.commit_time_ns
            size = 0
            ino = _fallback_ino(path)
            nlink = 1
            rdev = 0
        if kind == mf.KIND_DIR:
            nlink = 2 + self.manifest.subdirs(path)
        shared = self._shared_ints
        stat = (shared.setdefault(mode, mode), ino, nlink, shared.setdefault(uid, uid),
                shared.setdefault(gid, gid), size, rdev, mtime)
        if kind == mf.KIND_DIR:
            return DirNode(path, oid, stat, xattrs)
        if kind == mf.KIND_SYMLINK:
            return SymlinkNode(oid, stat, xattrs)
        if kind == mf.KIND_FILE:
            return Node(oid, stat, xattrs)
        return SpecialNode(kind, stat, xattrs)

    def _error_node(self, path: bytes, reason: str) -> Node:
        self._log_once(path, reason)
        return ErrorNode(reason)

    def _log_once(self, path: bytes, reason: str) -> None:
        key = (path, reason)
        if key not in self._logged:
            self._logged.add(key)
            log.error("/%s: %s", os.fsdecode(path) if path != b"." else "", reason)

    def _load_dir(self, node: Node) -> Dict[bytes, Node]:
        """Build *node*'s children from its tree and the manifest."""
        path = node.path
        prefix = b"" if path == b"." else path + b"/"
        listed = {name: (verdict, ino) for name, verdict, ino in self.manifest.listing(path)}
        children: Dict[bytes, Node] = {}
        items: List[go.TreeItem] = []
        if node.oid is not None:
            try:
                items = go.parse_tree(self._read(node.oid, go.OBJ_TREE, "tree"))
            except (CorruptObjectError, go.TreeFormatError) as err:
                raise EntryError(f"directory unreadable: {err}") from None
        for item in items:
            name = item.name
            if path == b"." and name == mf.MANIFEST_DIR:
                continue
            # most names need no closer look: not empty, not starting with
            # a dot, short enough and without a slash (a tree's names hold
            # no NUL: it ends them)
            if not name or name[0] == 46 or len(name) > go.NAME_MAX or b"/" in name:
                problem = go.name_problem(name)
                if problem:
                    self._log_once(path, f"tree entry {name!r} not served: {problem}")
                    continue
            child_path = prefix + name
            if name in children:        # only tree entries are in it yet
                children[name] = self._error_node(child_path, "name appears twice in its tree")
                continue
            children[name] = self._git_child(child_path, item, *listed.pop(name, (None, 0)))
        for name, (verdict, ino) in listed.items():
            child_path = prefix + name
            if isinstance(verdict, str):
                if go.name_problem(name):      # could not even be listed
                    self._log_once(path, f"entry {name[:60]!r}... not served: {verdict}")
                    continue
                children[name] = self._error_node(child_path, verdict)
            elif verdict.kind in mf.GIT_KINDS:
                children[name] = self._error_node(
                    child_path, "the manifest lists it but the tree has no such entry")
            else:
                children[name] = self._entry_node(child_path, verdict.kind, None, verdict, ino)
        return children

    def _entry_node(self, path: bytes, kind: str, oid: Optional[bytes],
                    entry: Optional[mf.Entry], ino: int, git_mode: int = 0) -> Node:
        """_make_node for one child: whatever is wrong with its entry costs
        that entry (an I/O error), never its directory."""
        try:
            return self._make_node(path, kind, oid, entry, ino, git_mode)
        except EntryError as err:
            return self._error_node(path, str(err))

    def _git_child(self, path: bytes, item: go.TreeItem,
                   verdict: Optional[mf.Verdict], ino: int) -> Node:
        """The node of a tree entry, with the manifest's *verdict* on its
        line (None: it has none)."""
        mode = item.mode
        if mode == go.MODE_TREE or mode == go.MODE_GITLINK:
            kind = mf.KIND_DIR
        elif mode in (go.MODE_BLOB, go.MODE_EXEC):
            kind = mf.KIND_FILE
        elif mode == go.MODE_LINK:
            kind = mf.KIND_SYMLINK
        else:
            return self._error_node(path, f"unknown tree entry mode {mode:o}")
        if isinstance(verdict, str):
            return self._error_node(path, verdict)
        entry = verdict
        if entry is not None and entry.kind != kind:
            return self._error_node(path, f"the manifest says kind {entry.kind!r}, "
                                          f"the tree says {kind!r}")
        # A submodule (gitlink) is served as an empty directory.
        oid = None if mode == go.MODE_GITLINK else item.oid
        node = self._entry_node(path, kind, oid, entry, ino, git_mode=mode)
        if node.error is not None:
            return node
        if entry is None and oid is not None and kind != mf.KIND_DIR:
            try:
                node.st_size = self._object_size(oid)
            except (KeyError, pygit2.GitError, ValueError) as err:
                return self._error_node(path, f"object {oid.hex()} unreadable: {err}")
        return node

    def _object_size(self, oid: bytes) -> int:
        read_header = getattr(self.odb, "read_header", None)   # pygit2 >= 1.15
        if read_header is not None:
            return read_header(pygit2.Oid(raw=oid))[1]
        return len(self.odb.read(pygit2.Oid(raw=oid))[1])

    # -- the view --------------------------------------------------------

    def lookup(self, path: bytes) -> Node:
        """The node at *path*; FileNotFoundError or EntryError otherwise."""
        if path == b".":
            node = self.root
        else:
            # walked from the root, one dict lookup per component: a
            # microsecond, where an index of every path cost ~60 bytes an
            # entry (6 MB at 100,000 entries)
            node = self.root
            for name in path.split(b"/"):
                if node.error is not None:
                    raise EntryError(node.error)
                if node.kind != mf.KIND_DIR:
                    raise NotADirectoryError(path)
                node = self.children(node).get(name)
                if node is None:
                    raise FileNotFoundError(path)
        if node.error is not None:
            raise EntryError(node.error)
        return node

    def children(self, node: Node) -> Dict[bytes, Node]:
        if node.kind != mf.KIND_DIR:
            raise NotADirectoryError(node.path)
        if node.children is None:
            try:
                kids = self._load_dir(node)
            except EntryError as err:
                self._log_once(node.path, str(err))
                raise
            node.children = kids
        return node.children

    def getattr(self, path: bytes) -> dict:
        return stat_dict(self.lookup(path).stat)

    def stat(self, path: bytes) -> Stat:
        """The attributes of *path* as a Stat tuple (what the adapter fills from)."""
        return self.lookup(path).stat

    def listdir(self, path: bytes) -> List[bytes]:
        return list(self.children(self.lookup(path)))

    def readlink(self, path: bytes) -> bytes:
        return self.readlink_node(self.lookup(path), path)

    def readlink_node(self, node: Node, path: bytes) -> bytes:
        """The target of the symlink *node*, found at *path* (which names it
        in the log)."""
        if node.kind != mf.KIND_SYMLINK:
            raise OSError(22, "not a symlink")   # EINVAL, as readlink(2)
        if node.target is None:
            where = self._files.locate(node.oid)
            if where is not None and where.size > PATH_MAX:
                # no kernel takes a longer target; never inflate a huge one
                reason = f"symlink target of {where.size} bytes (more than {PATH_MAX})"
                self._log_once(path, reason)
                raise EntryError(reason)
            target = self._content(node, path)
            node.target = target
        return node.target

    def xattrs(self, path: bytes) -> Tuple[Tuple[bytes, bytes], ...]:
        return self.lookup(path).xattrs

    def read_file(self, path: bytes, size: int, offset: int) -> bytes:
        """Bytes [offset, offset+size) of the regular file at *path*.

        There is no open/release: the adapter leaves both to libfuse, so a
        program that opens a file whose pages the kernel has cached costs
        no trip through Python.  Instead recently read blobs are kept, up to
        RECENT_BYTES (the kernel reads a file in several requests, and a
        blob is decompressed once, not per request); a blob read to its end
        is dropped at once, so a full read leaves nothing behind.  A blob
        larger than STREAM_ABOVE is streamed instead (bounded memory, see
        gitroot.git.blobstream).
        """
        return self.read_node(self.lookup(path), path, size, offset)

    def read_node(self, node: Node, path: bytes, size: int, offset: int) -> bytes:
        """read_file of the node found at *path*: the low-level back end
        finds nodes by number, not by walking a path."""
        if node.error is not None:
            raise EntryError(node.error)
        if node.kind != mf.KIND_FILE:
            raise IsADirectoryError(path) if node.kind == mf.KIND_DIR else OSError(6, "no device")
        stream = self._streams.get(node.oid)
        if stream is not None:
            return self._read_stream(node, path, stream, size, offset)
        recent = self._recent
        kept = recent.pop(path, None)
        ahead = None
        # a first read starts in order wherever it starts: the kernel
        # re-reading the evicted tail of a file it read before is a reader
        # in order, and leaves nothing behind either
        sequential = True
        if kept is not None:
            data, reached = kept
            self._recent_bytes -= len(data)
            # in order: from where the last read ended; OUT_OF_ORDER once a
            # read started elsewhere.  Not "forward": an executable's pages
            # fault mostly forward, with gaps, and reach its end long before
            # the program is done with it (dropped there, python3.11's
            # binary was inflated again and again: the cold python3 start
            # took ~350 ms instead of ~270)
            sequential = offset == reached
        elif self._ahead is not None and (ahead := self._ahead.take(node.oid)) is not None:
            # loaded ahead exactly as below (_load_ahead): the blob's bytes,
            # or over STREAM_ABOVE, the blob verified as a stream
            if offset == 0:
                self._first_read(node, path)
            if isinstance(ahead, StreamedBlob):
                self._check_size(node, path, ahead.size)
                return self._read_stream(node, path, self._keep_stream(node.oid, ahead),
                                         size, offset)
            data = ahead
            self._check_size(node, path, len(data))
            if offset == 0 and data.startswith(ELF_MAGIC):
                self._elf_first_read(node, data)
        else:
            where = self._files.locate(node.oid)
            if where is not None and where.size > STREAM_ABOVE:
                self._check_size(node, path, where.size)
                if not where.delta:
                    stream = self._stream(node, path, where)
                    if offset == 0 and self._ahead is not None:
                        self._first_read(node, path)
                    return self._read_stream(node, path, stream, size, offset)
                if where.size > MAX_WHOLE:
                    reason = (f"stored as a delta of {where.size} bytes: more than the "
                              f"{MAX_WHOLE >> 20} MiB a delta is inflated whole "
                              "(repack the repository)")
                    self._log_once(path, reason)
                    raise EntryError(reason)
            data = self._content(node, path)
            if offset == 0 and self._ahead is not None:
                self._first_read(node, path)
                if data.startswith(ELF_MAGIC):
                    self._elf_first_read(node, data)
        end = offset + size
        if end < len(data) or not sequential:
            # Kept until read to its end in order (a full read leaves
            # nothing behind); a blob read out of order, as a program's
            # pages fault, until RECENT_BYTES pushes it out.  A big one
            # alone.
            recent[path] = (data, end if sequential else OUT_OF_ORDER)
            self._recent_bytes += len(data)
            while self._recent_bytes > RECENT_BYTES and len(recent) > 1:
                self._recent_bytes -= len(recent.pop(next(iter(recent)))[0])
        return data[offset:end]

    def _first_read(self, node: Node, path: bytes) -> None:
        """A file was first read.  If a reader is going through the tree in
        order, as tar, cp -a or a backup does (this file was one asked for
        ahead, or the third in a row of one directory's files in listing
        order), have the next files of a depth-first walk in listing order
        read ahead, up to READ_AHEAD_FILES and AHEAD_BYTES.  A program
        starting (its libraries and modules, read where imports lead)
        rarely reads three neighbours in a row, and must not pay for
        blobs it never reads: read ahead, the cold python3 start of
        bench/mount.py cost the daemon 330 ms of CPU instead of 200."""
        parent, _, name = path.rpartition(b"/")
        parent = parent or b"."
        entries, position_of, file_number = self._order(parent)
        here = position_of.get(name)
        if here is None:
            return
        number = file_number[here]
        last_dir, last_number, run = self._sequence
        run = run + 1 if last_dir == parent and number == last_number + 1 else 1
        self._sequence = (parent, number, run)
        predicted = self._predicted.get(node.oid)
        if predicted is not None:
            if predicted > READ_AHEAD_FILES // 2:
                return      # enough asked for already: ask again half-way
        elif run < 3:
            return
        wanted, budget = [], AHEAD_BYTES
        for kid in self._files_after(parent, here):
            cost = _held_ahead(kid)
            if len(wanted) == READ_AHEAD_FILES:
                break
            if cost > budget:
                continue        # one too big for what is left: the loop reads it
            budget -= cost
            wanted.append((kid.oid, kid.st_size, cost))
        # each one asked for, with how many were asked for after it
        self._predicted = {item[0]: len(wanted) - i for i, item in enumerate(wanted)}
        self._ahead.want(wanted)

    def _elf_first_read(self, node: Node, image: bytes) -> None:
        """An executable or a library was first read: have the libraries
        it needs (gitroot.serve.elfdeps) read ahead, on the other core,
        while the loop serves this file and the dynamic loader gets to
        them one by one.  Not while a tree is read in order (_first_read
        reads ahead then, and tar wants no libraries), and not for a
        library already read once by this daemon as an ELF file (the kernel
        most likely still caches its pages: libc for every program after
        the first; a guess gone wrong costs one inflate on the other core,
        dropped after readahead.EXTRA_SECONDS).  The cold python3 start of
        bench/mount.py: docs/performance.md, "Libraries read ahead"."""
        seen = self._elf_seen
        if seen is None or len(seen) >= ELF_SEEN_MAX:
            return
        seen.add(node.oid)
        if self._sequence[2] >= 3 or node.oid in self._predicted:
            return
        wanted = elfdeps.needs(image)
        if not wanted.needed:
            return
        search = [d for d in wanted.search if d.startswith(b"/")] + LIBRARY_DIRS
        items, budget = [], AHEAD_BYTES
        for name in wanted.needed[:LIBRARIES_PER_FILE]:
            if b"/" in name:
                continue
            lib = self._library(name, search)
            if lib is None or lib.oid in seen or lib.st_size <= 0:
                continue
            seen.add(lib.oid)
            cost = _held_ahead(lib)
            if cost <= budget:
                budget -= cost
                items.append((lib.oid, lib.st_size, cost))
        if items:
            self._ahead.also(items)

    def _library(self, name: bytes, search: List[bytes]) -> Optional[Node]:
        """The regular file the dynamic loader finds for *name* in the
        directories *search* (absolute), symlinks followed; None if none."""
        for directory in search:
            try:
                node = self._resolve(directory + b"/" + name)
            except (OSError, EntryError):
                continue
            if node is not None and node.kind == mf.KIND_FILE and node.error is None:
                return node
        return None

    def _resolve(self, path: bytes) -> Optional[Node]:
        """The node at the absolute *path*, following symlinks in any
        component as the kernel would (at most MAX_SYMLINKS of them); None
        if there is none."""
        parts = [p for p in path.split(b"/") if p and p != b"."]
        trail: List[Node] = []          # the directories above node
        node, hops, steps = self.root, 0, 0
        while parts:
            steps += 1
            if steps > MAX_RESOLVE_STEPS:
                return None
            name = parts.pop(0)
            if name == b"..":
                node = trail.pop() if trail else self.root
                continue
            kid = self.children(node).get(name)
            if kid is None or kid.error is not None:
                return None
            if kid.kind == mf.KIND_SYMLINK:
                hops += 1
                if hops > MAX_SYMLINKS:
                    return None
                target = self.readlink_node(kid, name)
                if target.startswith(b"/"):
                    trail, node = [], self.root
                parts[:0] = [p for p in target.split(b"/") if p and p != b"."]
                continue
            if parts and kid.kind != mf.KIND_DIR:
                return None
            trail.append(node)
            node = kid
        return node

    def _order(self, path: bytes) -> Tuple[list, dict, list]:
        """The listing of directory *path* as the kernel got it: its
        (name, node) pairs, each name's position, and at each position the
        number of regular files before it.  The last few are kept."""
        cached = self._orders.get(path)
        if cached is None:
            try:
                entries = list(self.children(self.lookup(path)).items())
            except (OSError, EntryError):
                entries = []
            numbers, count = [], 0
            for _, kid in entries:
                numbers.append(count)
                count += kid.kind == mf.KIND_FILE
            cached = (entries, {n: i for i, (n, _) in enumerate(entries)}, numbers)
            self._orders[path] = cached
            while len(self._orders) > 64:
                del self._orders[next(iter(self._orders))]
        return cached

    def _files_after(self, path: bytes, here: int) -> Iterator[Node]:
        """The regular files a depth-first walk in listing order meets after
        position *here* of directory *path*, going up when a directory
        ends (at most READ_AHEAD_DIRS directories looked at), that could be
        read ahead (no error, not empty)."""
        stack = [(path, here + 1)]
        dirs = 0
        while dirs < READ_AHEAD_DIRS:
            if not stack:
                if path == b".":
                    return
                # this directory is done: go on after it in its parent
                parent, _, name = path.rpartition(b"/")
                parent = parent or b"."
                _, position_of, _ = self._order(parent)
                if name not in position_of:
                    return
                stack.append((parent, position_of[name] + 1))
                path = parent
            where, start = stack.pop()
            entries, _, _ = self._order(where)
            dirs += 1
            for i in range(start, len(entries)):
                name, kid = entries[i]
                if kid.error is not None:
                    continue
                if kid.kind == mf.KIND_FILE:
                    if kid.oid is not None and kid.st_size > 0:
                        yield kid
                elif kid.kind == mf.KIND_DIR:
                    stack.append((where, i + 1))
                    stack.append((kid.path, 0))
                    break

    def _stream(self, node: Node, path: bytes, where) -> StreamedBlob:
        stream = StreamedBlob(node.oid, where)
        try:
            stream.verify()
        except (BlobStreamError, OSError, zlib.error) as err:
            reason = f"object {node.oid.hex()} is unreadable: {err}"
            self._log_once(path, reason)
            raise EntryError(reason) from None
        return self._keep_stream(node.oid, stream)

    def _keep_stream(self, oid: bytes, stream: StreamedBlob) -> StreamedBlob:
        self._streams[oid] = stream
        while len(self._streams) > RECENT_STREAMS:
            del self._streams[next(iter(self._streams))]
        return stream

    def _read_stream(self, node: Node, path: bytes, stream: StreamedBlob, size: int,
                     offset: int) -> bytes:
        try:
            return stream.read(offset, size)
        except (BlobStreamError, OSError, zlib.error) as err:
            self._streams.pop(node.oid, None)
            reason = f"object {node.oid.hex()} is unreadable: {err}"
            self._log_once(path, reason)
            raise EntryError(reason) from None

    def _check_size(self, node: Node, path: bytes, actual: int) -> None:
        # st_size is the manifest's size, or the size git's object header
        # gave for a file the manifest lacks
        expected = node.st_size
        if actual != expected:
            reason = f"the manifest says {expected} bytes, the blob has {actual}"
            self._log_once(path, reason)
            raise EntryError(reason)

    def _content(self, node: Node, path: bytes) -> bytes:
        try:
            data = self._read(node.oid, go.OBJ_BLOB, "content")
        except CorruptObjectError as err:
            self._log_once(path, str(err))
            raise EntryError(str(err)) from None
        self._check_size(node, path, len(data))
        return data

    def statfs(self) -> dict:
        # The commit never changes: add the sizes up once, not at every df.
        if self._statfs is None:
            files = len(self.manifest)
            total = self.manifest.total_size()
            self._statfs = {
                "f_bsize": 4096, "f_frsize": 4096,
                "f_blocks": (total + 4095) // 4096, "f_bfree": 0, "f_bavail": 0,
                "f_files": files, "f_ffree": 0, "f_favail": 0, "f_namemax": 255,
            }
        return self._statfs

    def walk(self, path: bytes = b".") -> Iterator[Tuple[bytes, Node]]:
        """Every servable entry under *path*, depth first (for tests and tools)."""
        node = self.lookup(path)
        yield path, node
        if node.kind == mf.KIND_DIR:
            prefix = b"" if path == b"." else path + b"/"
            for name, kid in sorted(self.children(node).items()):
                if kid.error is None:
                    yield from self.walk(prefix + name)


def _device_number(rdev: Tuple[int, int]) -> int:
    """st_rdev of (major, minor); EntryError beyond what Linux can represent
    (os.makedev would even raise OverflowError for a major above 2**31)."""
    major, minor = rdev
    if major > mf.LINUX_MAX_MAJOR or minor > mf.LINUX_MAX_MINOR:
        raise EntryError(f"device number {major}:{minor} is beyond Linux's "
                         f"{mf.LINUX_MAX_MAJOR}:{mf.LINUX_MAX_MINOR}")
    return os.makedev(major, minor)


def _raw(oid) -> bytes:
    return oid.raw


def open_view(repo_path: str, rev: str) -> RootView:
    from gitroot.git.repository import open_repo
    try:
        return RootView(open_repo(repo_path), rev)
    except ManifestError:
        raise
    except CorruptObjectError as err:
        raise RepositoryError(str(err)) from None
