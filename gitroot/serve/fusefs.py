"""The FUSE adapter: a thin protocol layer over :class:`gitroot.serve.vfs.RootView`.

:class:`GitrootFS` turns FUSE paths into view paths and answers every write
with EROFS; :func:`errno_of` turns view exceptions into errno values, in one
place.  All filesystem knowledge is in ``gitroot.serve.vfs``.

Three back ends carry the operations to the kernel, chosen at run time by
:func:`load_backend`, the first of BACKENDS that loads:

- ``lowlevel`` (``gitroot.serve.lowlevel``): libfuse 3's inode-based
  low-level API through ctypes, no binding (libfuse 3 alone, as Debian
  packages it): readdirplus, listings cached by the kernel with any libfuse
  3 (a warm walk sends no request), cached symlinks, 1 MiB reads, and no
  path per request.  It has its own operations over the view, by nodeid,
  and uses :func:`errno_of` and :func:`fill_stat` from here;
- ``libfuse3`` (``gitroot.serve.libfuse3``): mfusepy on libfuse 3's
  high-level API, with the same levers where libfuse lets them through, and
  the FUSE passthrough prototype;
- ``libfuse2`` (``gitroot.serve.libfuse2``): fusepy on libfuse 2, what
  Debian 12 packages (python3-fusepy, libfuse2): the fallback.

The last two serve :class:`GitrootFS`, by path.

Paths cross the bindings as ``str``; both are told to use latin-1, which
maps every byte to one code point and back, so names that are not UTF-8
survive.

The content of a commit never changes, so :func:`mount_options` lets the
kernel cache attributes, entries, negative lookups and pages for a day.

Threading: FUSE runs single-threaded (``nothreads``): the GIL would serialize
the Python work anyway, and one thread keeps the view's lazy loading simple.
"""

import errno
import importlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterator, List, Optional, Tuple

from gitroot.errors import MountError
from gitroot.serve.vfs import BLKSIZE, BLOCK, EntryError, Node, RootView, Stat

log = logging.getLogger(__name__)

ENCODING = "latin-1"
CACHE_SECONDS = 86400

#: The environment variable that picks a back end: ``auto`` (the default:
#: the first of BACKENDS that loads) or one of BACKENDS by name.
BACKEND_ENV = "GITROOT_FUSE"
BACKENDS = ("lowlevel", "libfuse3", "libfuse2")

#: libfuse 3's sonames, newest first (3.17 in Debian 13 is .so.4).  The
#: library is named by soname: ctypes.util.find_library runs ldconfig -p,
#: which an initramfs lacks, and dlopen finds a soname through ld.so.cache.
LIBFUSE3 = ("libfuse3.so.4", "libfuse3.so.3")


def find_libfuse3() -> str:
    """The soname of the libfuse 3 that loads here; ImportError if none."""
    import ctypes
    for soname in LIBFUSE3:
        try:
            ctypes.CDLL(soname)
        except OSError:
            continue
        return soname
    raise ImportError("libfuse 3 is not installed (" + ", ".join(LIBFUSE3) + ")")


def _vpath(path: str) -> bytes:
    return b"." if path == "/" else path[1:].encode(ENCODING)


_ERRNO_OF_TYPE = {
    FileNotFoundError: errno.ENOENT,
    NotADirectoryError: errno.ENOTDIR,
    IsADirectoryError: errno.EISDIR,
}


def errno_of(err: Exception, op: str, args: tuple) -> int:
    """The errno a failed operation answers (the one place that maps them)."""
    if isinstance(err, EntryError):
        return errno.EIO
    if isinstance(err, OSError):
        # the view raises FileNotFoundError(path) and the like, without errno
        return err.errno or _ERRNO_OF_TYPE.get(type(err), errno.EIO)
    log.exception("internal error in %s%r", op, args[:1])
    return errno.EIO


class GitrootFS:
    """The filesystem operations of one commit, for either back end.

    A back end registers the operations this class defines (a None
    attribute is left to libfuse) and calls them with str paths; a failure
    is an exception that :func:`errno_of` maps.
    """

    use_ns = True      # times are integer nanoseconds

    def __init__(self, view: RootView, on_ready: Optional[Callable[[], None]] = None):
        self.view = view
        self.on_ready = on_ready

    # -- life cycle ------------------------------------------------------

    def init(self, path):
        if self.on_ready is not None:
            self.on_ready()

    # -- metadata --------------------------------------------------------

    def getattr(self, path, fh=None):
        return self.view.getattr(_vpath(path))

    def stat(self, path: str) -> Stat:
        """The attributes of *path* (the back ends fill ``struct stat`` from them)."""
        return self.view.stat(_vpath(path))

    def listing(self, path: str) -> Iterator[Tuple[bytes, Optional[Stat]]]:
        """(name, Stat) for each entry of the directory at *path*; the Stat
        is None for an entry a lookup answers with EIO (it is listed, so
        ``ls`` shows it, but never described).  An unreadable directory
        fails here, before the back end fills anything."""
        kids = self.view.children(self.view.lookup(_vpath(path)))
        return ((name, kid.stat if kid.error is None else None)
                for name, kid in kids.items())

    def node(self, path: str) -> Node:
        """The view's node at *path* (the passthrough lever reads its blob id)."""
        return self.view.lookup(_vpath(path))

    def readlink(self, path):
        return self.view.readlink(_vpath(path)).decode(ENCODING)

    def getxattr(self, path, name, position=0):
        want = name.encode(ENCODING)
        for key, value in self.view.xattrs(_vpath(path)):
            if key == want:
                return value
        raise OSError(errno.ENODATA, "no such attribute")

    def listxattr(self, path):
        return [k.decode(ENCODING) for k, _ in self.view.xattrs(_vpath(path))]

    def statfs(self, path):
        return self.view.statfs()

    def access(self, path, amode):
        if amode & os.W_OK:
            raise OSError(errno.EROFS, "read-only file system")
        self.view.lookup(_vpath(path))
        return 0

    # -- contents --------------------------------------------------------

    def open(self, path, flags):
        """ENOSYS, once: the kernel then stops sending OPEN and RELEASE for
        files altogether (its ``no_open`` mode, Linux >= 4.19 — older kernels
        just get this error on every open) and keeps their pages cached
        (FOPEN_KEEP_CACHE is its default then).  A file's open and close then
        cost no round trip at all; read() finds the file by path (see
        RootView.read_file).  The mount is read-only, so the kernel refuses
        writing opens before they get here, and permissions are checked by
        the kernel (default_permissions)."""
        raise OSError(errno.ENOSYS, "no open")

    def read(self, path, size, offset, fh):
        return self.view.read_file(_vpath(path), size, offset)

    def readdir(self, path, fh):
        """The bindings' generic listing; both back ends replace it with
        their own, which fill libfuse's buffer from listing() directly."""
        return [".", "..", *(n.decode(ENCODING) for n, _ in self.listing(path))]

    # Left to libfuse under libfuse 2: an unreadable directory fails at
    # readdir() with EIO instead, and a walk saves one trip through Python
    # per directory.  The libfuse 3 back end has its own (cache_readdir).
    opendir = None


# Operations the bindings would register from their defaults although they
# do nothing here.  Unregistered, libfuse answers them itself (FLUSH once
# with ENOSYS, after which the kernel stops sending it), so a close() or
# closedir() costs no trip through Python.
for _op in ("release", "flush", "fsync", "fsyncdir", "releasedir", "ioctl", "destroy"):
    setattr(GitrootFS, _op, None)

WRITE_OPS = frozenset((
    "chmod", "chown", "create", "link", "mkdir", "mknod", "removexattr",
    "rename", "rmdir", "setxattr", "symlink", "truncate", "unlink", "utimens",
    "write",
))
# The bindings only register operations the class defines; define the write
# ones so the kernel gets EROFS instead of ENOSYS.
for _op in WRITE_OPS:
    def _refuse(self, *args, _op=_op):
        raise OSError(errno.EROFS, "read-only file system")
    _refuse.__name__ = _op
    setattr(GitrootFS, _op, _refuse)
del _op, _refuse


_NS = 1_000_000_000


def fill_stat(st, stat: Stat) -> None:
    """Fill a binding's ``c_stat`` from a view's Stat: the bindings'
    set_st_attrs for our fixed set of fields, without their per-key
    hasattr/getattr loop (a third of a cold metadata walk's time)."""
    mode, ino, nlink, uid, gid, size, rdev, mtime = stat
    st.st_mode = mode
    st.st_ino = ino
    st.st_nlink = nlink
    st.st_uid = uid
    st.st_gid = gid
    st.st_size = size
    st.st_rdev = rdev
    st.st_blocks = (size + BLOCK - 1) // BLOCK
    st.st_blksize = BLKSIZE
    sec, nsec = divmod(mtime, _NS)
    st.st_atimespec.tv_sec = st.st_mtimespec.tv_sec = st.st_ctimespec.tv_sec = sec
    st.st_atimespec.tv_nsec = st.st_mtimespec.tv_nsec = st.st_ctimespec.tv_nsec = nsec


def mount_options(allow_other: bool, suid: bool = False) -> dict:
    """libfuse's mount options.  *suid* (a system root, see ``gitroot mount
    --suid``) makes setuid/setgid bits and device files take effect; libfuse
    mounts ``nosuid,nodev`` otherwise, which is right for any other mount of
    a commit that may come from someone else."""
    opts = dict(
        ro=True,
        default_permissions=True,     # the kernel checks modes and owners
        use_ino=True,                 # serve our stable inode numbers
        kernel_cache=True,            # pages stay cached across opens
        attr_timeout=CACHE_SECONDS,
        entry_timeout=CACHE_SECONDS,
        negative_timeout=CACHE_SECONDS,
        fsname="gitroot",
        subtype="gitroot",
    )
    if allow_other:
        opts["allow_other"] = True
    if suid:
        opts["suid"] = True
        opts["dev"] = True
    return opts


@dataclass(frozen=True)
class Backend:
    """One way to reach the kernel: a binding and the libfuse it loaded."""

    name: str           # one of BACKENDS
    binding: str        # e.g. "mfusepy 3.1.1"
    library: str        # the shared library the binding loaded
    module: ModuleType  # gitroot.serve.<name>

    def describe(self) -> str:
        return f"{self.name} ({self.binding}, {self.library})"

    def record(self) -> dict:
        return {"backend": self.name, "binding": self.binding, "library": self.library}

    def serve(self, view: RootView, on_ready: Optional[Callable[[], None]],
              mountpoint: str, options: dict, debug: bool) -> None:
        self.module.serve(view, on_ready, mountpoint, options, debug)


def load_backend(choice: Optional[str] = None) -> Backend:
    """The back end to serve with: *choice*, else $GITROOT_FUSE, else the
    first of BACKENDS that loads.  Loading imports the binding, which loads
    libfuse, so a missing library is told before anything is mounted."""
    choice = choice or os.environ.get(BACKEND_ENV) or "auto"
    if choice == "auto":
        names: List[str] = list(BACKENDS)
    elif choice in BACKENDS:
        names = [choice]
    else:
        raise MountError(f"{BACKEND_ENV}={choice}: expected auto, " + " or ".join(BACKENDS))
    reasons = []
    for name in names:
        try:
            module = importlib.import_module(f"gitroot.serve.{name}")
            binding, library = module.describe()
        except (ImportError, OSError, AttributeError, RuntimeError) as err:
            # mfusepy raises OSError without a libfuse and AttributeError for
            # a libfuse of the wrong major version
            reasons.append(f"{name}: {err}")
            log.debug("FUSE back end %s unavailable: %s", name, err)
            continue
        return Backend(name, binding, library, module)
    raise MountError("no FUSE back end can be loaded (" + "; ".join(reasons) + ")")


def run_fuse(view: RootView, mountpoint: str, allow_other: bool, on_ready=None,
             debug: bool = False, suid: bool = False,
             backend: Optional[Backend] = None) -> None:
    """Serve *view* at *mountpoint* until unmounted (blocks)."""
    backend = backend or load_backend()
    backend.serve(view, on_ready, mountpoint, mount_options(allow_other, suid), debug)


def binding_version(distribution: str) -> str:
    """The installed version of a binding, for the log line and record."""
    from importlib import metadata
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def binding_metadata(distribution: Optional[str]) -> List[str]:
    """The files importlib.metadata reads *distribution*'s version from
    (``METADATA`` of a .dist-info, ``PKG-INFO`` of an .egg-info): the
    initramfs hook copies them beside the binding, or the booted system's
    status shows its version as "?".  None (a back end without a binding):
    none."""
    from importlib import metadata
    if distribution is None:
        return []
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return []
    # a PathDistribution's directory (or .egg-info file): the standard
    # library has no public name for where it read the metadata
    where = getattr(dist, "_path", None)
    if where is None:
        return []
    where = str(where)
    if os.path.isfile(where):
        return [where]
    return [path for path in (os.path.join(where, name) for name in ("METADATA", "PKG-INFO"))
            if os.path.isfile(path)]


def loaded_library(soname: str) -> str:
    """Where the shared library *soname* was loaded from (ctypes only knows
    the name it was asked for); *soname* itself if it cannot be told."""
    try:
        with open("/proc/self/maps") as f:
            mapped = dict.fromkeys("/" + p for p in (line.rstrip("\n").partition("/")[2]
                                                     for line in f) if p)
    except OSError:
        return soname
    for path in mapped:
        if os.path.basename(path).startswith(soname):
            return path
    # The file need not carry the soname: Debian 13's libfuse3.so.4 is a
    # link to libfuse3.so.3.17.x.  Match what the soname resolves to.
    for path in mapped:
        candidate = os.path.join(os.path.dirname(path), soname)
        if os.path.exists(candidate) and os.path.realpath(candidate) == os.path.realpath(path):
            return path
    return soname
