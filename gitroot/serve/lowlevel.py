"""The libfuse 3 low-level back end: libfuse's inode-based API through ctypes.

The other two back ends speak libfuse's high-level API, which names every
file by its path: libfuse keeps a table of paths in C, and each request
reaches Python as a path the view walks again from the root.  A commit is a
tree of immutable nodes, which is what the low-level API is made for: the
kernel names a node by a number (its *nodeid*) and this module answers from
a table of the nodes it has handed out.  What that buys, each measured in
docs/performance.md ("The low-level back end"):

- a lookup, getattr or read finds its node with one dict lookup, and no
  path is built or walked per request;
- opendir and open answer ENOSYS once: the kernel then keeps listings and
  file pages cached without asking again, with every libfuse 3 (the
  high-level API cannot do this, and passes cache_readdir on only from
  3.16; Debian 12 has 3.14), so a warm walk or read sends no request;
- readdirplus hands the kernel each entry's nodeid and attributes, so a
  cold walk needs no LOOKUP;
- a missing name is answered with a negative entry the kernel caches.

It needs no Python binding, only libfuse 3 itself (Debian: libfuse3-3 on
12, libfuse3-4 on 13), so an image built from Debian's packages alone gets
libfuse 3's speed without mfusepy.

Nodeids: the root is 1 (FUSE_ROOT_ID); any other node's nodeid is its
inode number, so the names of a hardlink group are one kernel inode, as on
any filesystem.  Nodes never change while mounted, so FORGET is left to
libfuse (ignored) and the table only grows, bounded by the tree.

Threading: libfuse calls in on its one thread (``fuse_session_loop``).
"""

import ctypes
import errno
import logging
import os
import platform
import signal
import stat as stmod
import struct
from typing import Callable, Dict, List, Optional, Tuple

from gitroot.errors import MountError
from gitroot.git import manifest as mf
from gitroot.serve.fusefs import (CACHE_SECONDS, errno_of, fill_stat, find_libfuse3,
                                  loaded_library)
from gitroot.serve.vfs import BLKSIZE, Node, RootView

log = logging.getLogger(__name__)

_SONAME = find_libfuse3()
_lib = ctypes.CDLL(_SONAME)

#: what the mount's record names as its binding: there is none but ctypes
DISTRIBUTION = None


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


# struct stat as glibc lays it out; the field names are fusepy's, so
# fusefs.fill_stat fills it
_MACHINE = platform.machine()
if _MACHINE == "x86_64":
    _STAT_FIELDS = [
        ("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64),
        ("st_nlink", ctypes.c_uint64), ("st_mode", ctypes.c_uint32),
        ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
        ("_pad0", ctypes.c_int32), ("st_rdev", ctypes.c_uint64),
        ("st_size", ctypes.c_int64), ("st_blksize", ctypes.c_int64),
        ("st_blocks", ctypes.c_int64), ("st_atimespec", Timespec),
        ("st_mtimespec", Timespec), ("st_ctimespec", Timespec),
        ("_reserved", ctypes.c_int64 * 3)]
elif _MACHINE == "aarch64":
    _STAT_FIELDS = [
        ("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64),
        ("st_mode", ctypes.c_uint32), ("st_nlink", ctypes.c_uint32),
        ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
        ("st_rdev", ctypes.c_uint64), ("_pad1", ctypes.c_uint64),
        ("st_size", ctypes.c_int64), ("st_blksize", ctypes.c_int32),
        ("_pad2", ctypes.c_int32), ("st_blocks", ctypes.c_int64),
        ("st_atimespec", Timespec), ("st_mtimespec", Timespec),
        ("st_ctimespec", Timespec), ("_reserved", ctypes.c_int32 * 2)]
else:
    raise ImportError(f"no struct stat layout known for {_MACHINE}")


class Stat(ctypes.Structure):
    _fields_ = _STAT_FIELDS


class StatVfs(ctypes.Structure):
    """struct statvfs of 64-bit Linux."""

    _fields_ = [("f_bsize", ctypes.c_ulong), ("f_frsize", ctypes.c_ulong),
                ("f_blocks", ctypes.c_uint64), ("f_bfree", ctypes.c_uint64),
                ("f_bavail", ctypes.c_uint64), ("f_files", ctypes.c_uint64),
                ("f_ffree", ctypes.c_uint64), ("f_favail", ctypes.c_uint64),
                ("f_fsid", ctypes.c_ulong), ("f_flag", ctypes.c_ulong),
                ("f_namemax", ctypes.c_ulong), ("_spare", ctypes.c_int * 6)]


class EntryParam(ctypes.Structure):
    """struct fuse_entry_param (fuse_lowlevel.h)."""

    _fields_ = [("ino", ctypes.c_uint64), ("generation", ctypes.c_uint64),
                ("attr", Stat), ("attr_timeout", ctypes.c_double),
                ("entry_timeout", ctypes.c_double)]


class FileInfo(ctypes.Structure):
    """struct fuse_file_info up to poll_events: the same offsets in 3.14 and
    3.17 (3.17 turned one padding word into flag bits and appended fields)."""

    _fields_ = [("flags", ctypes.c_int32), ("bits", ctypes.c_uint32),
                ("padding2", ctypes.c_uint32), ("padding3", ctypes.c_uint32),
                ("fh", ctypes.c_uint64), ("lock_owner", ctypes.c_uint64),
                ("poll_events", ctypes.c_uint32)]


# fuse_file_info's flag bits (the same in 3.14 and 3.17)
FI_KEEP_CACHE = 1 << 2
FI_CACHE_READDIR = 1 << 6


class ConnInfo(ctypes.Structure):
    """The start of struct fuse_conn_info (unchanged from 3.0 to 3.17)."""

    _fields_ = [("proto_major", ctypes.c_uint32), ("proto_minor", ctypes.c_uint32),
                ("max_write", ctypes.c_uint32), ("max_read", ctypes.c_uint32),
                ("max_readahead", ctypes.c_uint32), ("capable", ctypes.c_uint32),
                ("want", ctypes.c_uint32)]


class Args(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)),
                ("allocated", ctypes.c_int)]


# fuse_common.h
FUSE_CAP_CACHE_SYMLINKS = 1 << 23

_req = ctypes.c_void_p
_ino = ctypes.c_uint64
_fi = ctypes.POINTER(FileInfo)
INIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ConnInfo))
LOOKUP = ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_char_p)
INODE = ctypes.CFUNCTYPE(None, _req, _ino)                       # readlink, statfs
# the fuse_file_info of these is passed as a plain address: a POINTER
# argument makes ctypes build a pointer object at every call, and only
# op_opendir (with its lever off) looks at it, through ctypes.cast
INODE_FI = ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_void_p)    # getattr, open, opendir
INODE_READ = ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_size_t, ctypes.c_int64,
                              ctypes.c_void_p)
GETXATTR = ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_char_p, ctypes.c_size_t)
LISTXATTR = ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_size_t)

#: struct fuse_lowlevel_ops up to readdirplus, in its order (fuse_lowlevel.h
#: of 3.14 and 3.17 alike); the operations left None are answered by
#: libfuse: FORGET (nothing to forget), RELEASE and RELEASEDIR (nothing to
#: release), the writes (ENOSYS; the mount is read-only, so the kernel refuses them before they get here)
OPS = ("init", "destroy", "lookup", "forget", "getattr", "setattr", "readlink", "mknod",
       "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "open", "read", "write",
       "flush", "release", "fsync", "opendir", "readdir", "releasedir", "fsyncdir",
       "statfs", "setxattr", "getxattr", "listxattr", "removexattr", "access", "create",
       "getlk", "setlk", "bmap", "ioctl", "poll", "write_buf", "retrieve_reply",
       "forget_multi", "flock", "fallocate", "readdirplus")


class LowlevelOps(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in OPS]


def _declare(name: str, restype, *argtypes) -> None:
    func = getattr(_lib, name)
    func.restype = restype
    func.argtypes = list(argtypes)


_declare("fuse_session_new", ctypes.c_void_p, ctypes.POINTER(Args),
         ctypes.POINTER(LowlevelOps), ctypes.c_size_t, ctypes.c_void_p)
_declare("fuse_session_mount", ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)
_declare("fuse_session_loop", ctypes.c_int, ctypes.c_void_p)
_declare("fuse_session_unmount", None, ctypes.c_void_p)
_declare("fuse_session_destroy", None, ctypes.c_void_p)
_declare("fuse_session_exit", None, ctypes.c_void_p)
_declare("fuse_set_signal_handlers", ctypes.c_int, ctypes.c_void_p)
_declare("fuse_remove_signal_handlers", None, ctypes.c_void_p)
_declare("fuse_reply_err", ctypes.c_int, _req, ctypes.c_int)
_declare("fuse_reply_entry", ctypes.c_int, _req, ctypes.POINTER(EntryParam))
_declare("fuse_reply_attr", ctypes.c_int, _req, ctypes.POINTER(Stat), ctypes.c_double)
_declare("fuse_reply_readlink", ctypes.c_int, _req, ctypes.c_char_p)
_declare("fuse_reply_open", ctypes.c_int, _req, _fi)
_declare("fuse_reply_buf", ctypes.c_int, _req, ctypes.c_char_p, ctypes.c_size_t)
_declare("fuse_reply_statfs", ctypes.c_int, _req, ctypes.POINTER(StatVfs))
_declare("fuse_reply_xattr", ctypes.c_int, _req, ctypes.c_size_t)
_declare("fuse_add_direntry", ctypes.c_size_t, _req, ctypes.c_void_p, ctypes.c_size_t,
         ctypes.c_char_p, ctypes.POINTER(Stat), ctypes.c_int64)
_declare("fuse_add_direntry_plus", ctypes.c_size_t, _req, ctypes.c_void_p, ctypes.c_size_t,
         ctypes.c_char_p, ctypes.POINTER(EntryParam), ctypes.c_int64)
_declare("fuse_pkgversion", ctypes.c_char_p)

LIBFUSE_VERSION = _lib.fuse_pkgversion().decode("ascii", "replace")
if not LIBFUSE_VERSION.startswith("3."):
    raise ImportError(f"{_SONAME} is libfuse {LIBFUSE_VERSION}, not libfuse 3")

ROOT_ID = 1     # FUSE_ROOT_ID
#: Turns this back end's one lever off, for bench/mount.py to measure
#: (``GITROOT_LOWLEVEL_OFF=no_opendir``); not meant for devices.
LEVERS_OFF_ENV = "GITROOT_LOWLEVEL_OFF"
#: the inode number listed for an entry that cannot be served (what
#: libfuse's high-level API lists for an entry without attributes): glibc's
#: readdir skips an entry of inode 0, and it must stay listed
UNKNOWN_INO = 0xFFFFFFFF
#: nodeids for the rare node whose inode number another node already has
#: (only a damaged manifest does that): above every inode number the view
#: gives (manifest lines, and HIGH_INO | 60 bits for entries it lacks)
SPARE_IDS = 1 << 63

#: struct fuse_direntplus (linux/fuse.h, the kernel's ABI): fuse_entry_out
#: (nodeid, generation, entry and attribute timeouts in seconds and
#: nanoseconds, then struct fuse_attr: ino, size, blocks, atime, mtime,
#: ctime, their nanoseconds, mode, nlink, uid, gid, rdev, blksize, flags),
#: then struct fuse_dirent (ino, off, namelen, type) and the name, padded to
#: 8 bytes.  Packed here, the way libfuse's fuse_add_direntry_plus lays it
#: out, instead of through that helper: a ctypes call, a memset and fifteen
#: ctypes field stores per entry were most of the daemon's time in the
#: listings of a cold walk (docs/performance.md, "Listings packed in Python").
_DIRENTPLUS = struct.Struct("<QQQQII QQQqqqIIIIIIIIII QQII")
_TIMEOUT_SEC, _TIMEOUT_NSEC = int(CACHE_SECONDS), int(CACHE_SECONDS % 1 * 1e9)
_PADDING = tuple(b"\0" * (-n % 8) for n in range(8))
_NS = 1_000_000_000

_reply_err = _lib.fuse_reply_err
_reply_entry = _lib.fuse_reply_entry
_reply_attr = _lib.fuse_reply_attr
_reply_buf = _lib.fuse_reply_buf
_add_plus = _lib.fuse_add_direntry_plus
_add = _lib.fuse_add_direntry


def _blank(struct):
    """*struct*, zeroed (the module reuses one of each per session)."""
    ctypes.memset(ctypes.byref(struct), 0, ctypes.sizeof(struct))
    return struct


def describe() -> Tuple[str, str]:
    """(binding, library) for the mount's log line and record."""
    return (f"ctypes, libfuse {LIBFUSE_VERSION} low-level API", loaded_library(_SONAME))


class Session:
    """One mount: the node table and the operations libfuse calls.

    Every operation replies exactly once, whatever happens: a failure is
    mapped by fusefs.errno_of (the one place that maps them) and answered as
    an error, and anything worse stops the loop after answering.
    """

    def __init__(self, view: RootView, on_ready: Optional[Callable[[], None]]):
        self.view = view
        self.on_ready = on_ready
        self.session: Optional[int] = None
        self.initialized = False
        self.no_opendir = "no_opendir" not in os.environ.get(LEVERS_OFF_ENV, "").split(",")
        # nodeid -> (node, path): the path names it in the view's logs and
        # keys the view's blob cache
        self.nodes: Dict[int, Tuple[Node, bytes]] = {ROOT_ID: (view.root, b".")}
        self.spare: Dict[bytes, int] = {}      # path -> nodeid, for SPARE_IDS
        self.next_spare = SPARE_IDS
        # the directory listed last (nodeid, its entries with ".", ".."):
        # a listing continues from an offset, and a walk lists one
        # directory to its end before the next
        self.listing: Tuple[int, List[Tuple[bytes, object]]] = (0, [])
        self._stat = Stat()
        self._entry = EntryParam(attr_timeout=CACHE_SECONDS, entry_timeout=CACHE_SECONDS)
        self.ops = LowlevelOps()
        self._callbacks = []      # kept alive as long as libfuse may call them
        for name, kind in (("init", INIT), ("lookup", LOOKUP), ("getattr", INODE_FI),
                           ("readlink", INODE), ("open", INODE_FI), ("read", INODE_READ),
                           ("opendir", INODE_FI), ("readdir", INODE_READ),
                           ("statfs", INODE), ("getxattr", GETXATTR),
                           ("listxattr", LISTXATTR), ("readdirplus", INODE_READ)):
            method = getattr(self, "op_" + name)
            callback = kind(method if name == "init" else self._guarded(name, method))
            self._callbacks.append(callback)
            setattr(self.ops, name, ctypes.cast(callback, ctypes.c_void_p))

    # -- plumbing --------------------------------------------------------

    def _guarded(self, name: str, method):
        def call(req, ino, *args):
            try:
                method(req, ino, *args)
            except Exception as err:         # noqa: B902 - mapped in one place
                _reply_err(req, errno_of(err, name, (self._path_of(ino),)))
            except BaseException:            # noqa: B902 - SystemExit and the like
                log.critical("stopping FUSE after %s", name, exc_info=True)
                _reply_err(req, errno.EIO)
                if self.session is not None:
                    _lib.fuse_session_exit(self.session)
        call.__name__ = name
        return call

    def _path_of(self, ino: int) -> bytes:
        known = self.nodes.get(ino)
        return known[1] if known is not None else b"<nodeid %d>" % ino

    def _node(self, ino: int) -> Tuple[Node, bytes]:
        known = self.nodes.get(ino)
        if known is None:
            # the kernel only names nodes this table handed out
            raise OSError(errno.ESTALE, "unknown nodeid")
        return known

    def _nodeid(self, node: Node, path: bytes) -> int:
        """The nodeid of *node* (reached at *path*), entered in the table."""
        ino = node.st_ino
        known = self.nodes.get(ino)
        if known is None:
            self.nodes[ino] = (node, path)
            return ino
        other = known[0]
        if other is node or (ino != ROOT_ID and other.kind == node.kind == mf.KIND_FILE
                             and other.oid == node.oid and other.stat == node.stat):
            return ino      # the same node, or another name of a hardlink group
        spare = self.spare.get(path)
        if spare is None:
            spare = self.spare[path] = self.next_spare
            self.next_spare += 1
            self.nodes[spare] = (node, path)
        return spare

    def _fill(self, stat: Tuple) -> Stat:
        st = _blank(self._stat)
        fill_stat(st, stat)
        return st

    def _entry_of(self, name: bytes, kid, parent_path: bytes) -> EntryParam:
        """The entry for *kid*, a node or (for "." and "..") an inode
        number.  Nodeid 0 -- the kernel links nothing, and a lookup of an
        unservable entry answers EIO -- for "." and ".." and for an entry
        that cannot be served."""
        entry = self._entry
        attr = _blank(entry.attr)
        entry.ino = 0
        if type(kid) is int:
            attr.st_mode = stmod.S_IFDIR
            attr.st_ino = kid
        elif kid is None or kid.error is not None:
            attr.st_ino = UNKNOWN_INO
        else:
            entry.ino = self._nodeid(kid, name if parent_path == b"." else parent_path + b"/" + name)
            fill_stat(attr, kid.stat)
        return entry

    def _dirent_of(self, kid) -> Stat:
        """What a plain READDIR lists of *kid* (as _entry_of): type and inode."""
        st = _blank(self._stat)
        if type(kid) is int:
            st.st_mode = stmod.S_IFDIR
            st.st_ino = kid
        elif kid.error is None:
            st.st_mode = kid.st_mode
            st.st_ino = kid.st_ino
        else:
            st.st_ino = UNKNOWN_INO
        return st

    # -- operations ------------------------------------------------------

    def op_init(self, userdata, conn) -> None:
        info = conn.contents
        info.want |= info.capable & FUSE_CAP_CACHE_SYMLINKS
        self.initialized = True
        if self.on_ready is not None:
            self.on_ready()

    def op_lookup(self, req, parent: int, name: bytes) -> None:
        node, path = self._node(parent)
        kid = self.view.children(node).get(name)
        if kid is None:
            # a negative entry, cached as long as the others
            entry = self._entry
            entry.ino = 0
            _reply_entry(req, entry)
            return
        if kid.error is not None:
            raise OSError(errno.EIO, kid.error)
        _reply_entry(req, self._entry_of(name, kid, path))

    def op_getattr(self, req, ino: int, fi) -> None:
        node, _ = self._node(ino)
        _reply_attr(req, self._fill(node.stat), CACHE_SECONDS)

    def op_readlink(self, req, ino: int) -> None:
        node, path = self._node(ino)
        _lib.fuse_reply_readlink(req, self.view.readlink_node(node, path))

    def op_read(self, req, ino: int, size: int, offset: int, fi) -> None:
        node, path = self._node(ino)
        data = self.view.read_node(node, path, size, offset)
        _reply_buf(req, data, len(data))

    def op_open(self, req, ino: int, fi) -> None:
        """ENOSYS, once: the kernel then sends no OPEN or RELEASE for files
        at all and keeps their pages cached (fusefs.GitrootFS.open says
        why).  Left to libfuse, an OPEN is answered without keep_cache, and
        every open drops the file's pages (a warm full read of the quick
        tree: 246 ms against 53 ms)."""
        _reply_err(req, errno.ENOSYS)

    def op_opendir(self, req, ino: int, fi) -> None:
        """ENOSYS, once (the ``no_opendir`` lever): the kernel then opens
        directories without asking (no OPENDIR, no RELEASEDIR) and keeps
        their listings cached as if opendir had answered cache_readdir and
        keep_cache (Linux >= 5.1, fuse_file_open's default for its
        no_opendir mode), so a warm walk sends no request at all.  There is
        no handle to create: listings are found by nodeid.  An unreadable
        directory then fails at readdir (EIO), not at opendir.

        With the lever off, opendir answers cache_readdir and keep_cache
        from Python, once per directory opened."""
        if self.no_opendir:
            _reply_err(req, errno.ENOSYS)
            return
        node, _ = self._node(ino)
        if node.kind != mf.KIND_DIR:
            raise NotADirectoryError(ino)
        # the kernel keeps the listing in its page cache, across opens
        info = ctypes.cast(fi, _fi)
        info.contents.bits |= FI_CACHE_READDIR | FI_KEEP_CACHE
        _lib.fuse_reply_open(req, info)

    def _entries(self, ino: int) -> List[Tuple[bytes, object]]:
        """The listing of directory *ino*: its entries' nodes, after "."
        and ".." with their inode numbers (glibc's readdir skips an entry
        of inode 0)."""
        if self.listing[0] != ino:
            node, path = self._node(ino)
            # an unreadable directory fails here, before anything is filled
            kids = self.view.children(node)
            parent = self.view.lookup(path.rpartition(b"/")[0] or b".")
            self.listing = (ino, [(b".", node.st_ino), (b"..", parent.st_ino), *kids.items()])
        return self.listing[1]

    def _list(self, req, ino: int, size: int, offset: int, plus: bool) -> None:
        """Fill one reply of a listing from *offset* (an entry's offset is
        its position + 1, so the kernel can continue where a full buffer
        stopped)."""
        entries = self._entries(ino)
        if plus:
            data = self._direntplus(ino, entries, size, offset)
            _reply_buf(req, data, len(data))
            return
        if offset >= len(entries):
            # the end: the kernel asks once more after each listing (a
            # plain READDIR, as readdirplus is only used from offset 0)
            _reply_buf(req, None, 0)
            return
        buf = ctypes.create_string_buffer(size)
        start = ctypes.addressof(buf)
        used = 0
        for position in range(max(offset, 0), len(entries)):
            name, kid = entries[position]
            added = _add(req, start + used, size - used, name, self._dirent_of(kid),
                         position + 1)
            if added > size - used:
                break
            used += added
        _reply_buf(req, buf, used)

    def _direntplus(self, ino: int, entries: List[Tuple[bytes, object]], size: int,
                    offset: int) -> bytes:
        """READDIRPLUS's reply: the fuse_direntplus records of *entries*
        from *offset* that fit in *size* bytes (see _DIRENTPLUS; what
        libfuse's fuse_add_direntry_plus writes, given _entry_of's entry)."""
        nodes = self.nodes
        _, path = nodes[ino]
        prefix = b"" if path == b"." else path + b"/"
        pack = _DIRENTPLUS.pack
        records = []
        used = 0
        for position in range(max(offset, 0), len(entries)):
            name, kid = entries[position]
            length = _DIRENTPLUS.size + len(name)
            padding = _PADDING[length % 8]
            length += len(padding)
            if used + length > size:
                break
            used += length
            blksize = BLKSIZE
            if type(kid) is int:            # "." and "..": no nodeid, a directory
                nodeid, mode, st_ino, nlink, uid, gid, st_size, rdev, mtime, blksize = (
                    0, stmod.S_IFDIR, kid, 0, 0, 0, 0, 0, 0, 0)
            elif kid is None or kid.error is not None:
                nodeid, mode, st_ino, nlink, uid, gid, st_size, rdev, mtime, blksize = (
                    0, 0, UNKNOWN_INO, 0, 0, 0, 0, 0, 0, 0)
            else:
                mode, st_ino, nlink, uid, gid, st_size, rdev, mtime = (
                    kid.st_mode, kid.st_ino, kid.st_nlink, kid.st_uid, kid.st_gid,
                    kid.st_size, kid.st_rdev, kid.st_mtime)
                known = nodes.get(st_ino)
                if known is None:           # _nodeid's common case, inline
                    nodes[st_ino] = (kid, prefix + name)
                    nodeid = st_ino
                elif known[0] is kid:
                    nodeid = st_ino
                else:
                    nodeid = self._nodeid(kid, prefix + name)
            sec, nsec = divmod(mtime, _NS)
            records.append(pack(
                nodeid, 0, _TIMEOUT_SEC, _TIMEOUT_SEC, _TIMEOUT_NSEC, _TIMEOUT_NSEC,
                st_ino, st_size, (st_size + 511) // 512, sec, sec, sec, nsec, nsec, nsec,
                mode, nlink & 0xFFFFFFFF, uid, gid, rdev & 0xFFFFFFFF, blksize, 0,
                st_ino, position + 1, len(name), (mode & 0o170000) >> 12))
            records.append(name)
            records.append(padding)
        return b"".join(records)

    def op_readdir(self, req, ino: int, size: int, offset: int, fi) -> None:
        self._list(req, ino, size, offset, plus=False)

    def op_readdirplus(self, req, ino: int, size: int, offset: int, fi) -> None:
        self._list(req, ino, size, offset, plus=True)

    def op_statfs(self, req, ino: int) -> None:
        out = StatVfs()
        for key, value in self.view.statfs().items():
            setattr(out, key, value)
        _lib.fuse_reply_statfs(req, out)

    def op_getxattr(self, req, ino: int, name: bytes, size: int) -> None:
        node, _ = self._node(ino)
        for key, value in node.xattrs:
            if key == name:
                self._reply_sized(req, value, size)
                return
        raise OSError(errno.ENODATA, "no such attribute")

    def op_listxattr(self, req, ino: int, size: int) -> None:
        node, _ = self._node(ino)
        self._reply_sized(req, b"".join(key + b"\0" for key, _ in node.xattrs), size)

    @staticmethod
    def _reply_sized(req, value: bytes, size: int) -> None:
        """getxattr(2)'s protocol: size 0 asks for the length only."""
        if size == 0:
            _lib.fuse_reply_xattr(req, len(value))
        elif len(value) > size:
            _reply_err(req, errno.ERANGE)
        else:
            _reply_buf(req, value, len(value))


def _mount_options(options: dict) -> str:
    """The kernel's mount options among fusefs.mount_options (the rest --
    timeouts, inode numbers, page cache -- this module does itself)."""
    kernel = []
    for key in ("ro", "default_permissions", "allow_other", "suid", "dev"):
        if options.get(key):
            kernel.append(key)
    for key in ("fsname", "subtype"):
        if options.get(key):
            kernel.append(f"{key}={options[key]}")
    return ",".join(kernel)


def serve(view: RootView, on_ready: Optional[Callable[[], None]], mountpoint: str,
          options: dict, debug: bool) -> None:
    """Serve *view* at *mountpoint* until unmounted (blocks)."""
    state = Session(view, on_ready)
    argv = [b"gitroot", b"-o", _mount_options(options).encode()] + ([b"-d"] if debug else [])
    args = Args(len(argv), (ctypes.c_char_p * len(argv))(*argv), 0)
    session = _lib.fuse_session_new(ctypes.byref(args), ctypes.byref(state.ops),
                                    ctypes.sizeof(LowlevelOps), None)
    if not session:
        raise MountError(f"{mountpoint}: libfuse refused the session (see its message above)")
    state.session = session
    # libfuse installs its SIGINT/SIGTERM/SIGHUP handlers (which end the
    # loop) only over the default action; Python's own SIGINT handler would
    # only raise inside the next request
    previous_int = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        if _lib.fuse_set_signal_handlers(session) != 0:
            raise MountError(f"{mountpoint}: libfuse could not set its signal handlers")
        try:
            if _lib.fuse_session_mount(session, os.fsencode(mountpoint)) != 0:
                raise MountError(f"{mountpoint}: FUSE mount failed (see libfuse's message above)")
            try:
                status = _lib.fuse_session_loop(session)
            finally:
                _lib.fuse_session_unmount(session)
        finally:
            _lib.fuse_remove_signal_handlers(session)
    finally:
        signal.signal(signal.SIGINT, previous_int)
        _lib.fuse_session_destroy(session)
    if status != 0 and not state.initialized:
        raise MountError(f"{mountpoint}: the FUSE loop failed ({os.strerror(-status)})")
    log.info("FUSE loop ended (libfuse status %d)", status)

