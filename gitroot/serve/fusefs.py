"""The FUSE adapter: a thin protocol layer over :class:`gitroot.vfs.RootView`.

It turns FUSE paths into view paths, view exceptions into errno values (in
one place, :meth:`GitrootFS.__call__`), and answers every write with EROFS.
All filesystem knowledge is in ``gitroot.serve.vfs``.

Paths cross fusepy as ``str``; fusepy is told to use latin-1, which maps
every byte to one code point and back, so names that are not UTF-8 survive.

The content of a commit never changes, so :func:`mount_options` lets the
kernel cache attributes, entries, negative lookups and pages for a day.

Threading: FUSE runs single-threaded (``nothreads``): the GIL would serialize
the Python work anyway, and one thread keeps the view's lazy loading simple.
"""

import ctypes
import errno
import logging
import os

from gitroot.serve.vfs import EntryError, RootView

try:                            # Debian's python3-fusepy names the module fusepy
    import fusepy as fuse
except ImportError:             # PyPI's fusepy installs it as fuse
    import fuse

log = logging.getLogger(__name__)

ENCODING = "latin-1"
CACHE_SECONDS = 86400


def _vpath(path: str) -> bytes:
    return b"." if path == "/" else path[1:].encode(ENCODING)


class GitrootFS(fuse.Operations):
    """fusepy operations for one commit."""

    use_ns = True      # times are integer nanoseconds

    def __init__(self, view: RootView, on_ready=None):
        self.view = view
        self.on_ready = on_ready

    def __call__(self, op, *args):
        method = getattr(self, op, None)
        if method is None:
            raise fuse.FuseOSError(errno.EROFS if op in _WRITE_OPS else errno.ENOSYS)
        try:
            return method(*args)
        except fuse.FuseOSError:
            raise
        except EntryError:
            raise fuse.FuseOSError(errno.EIO) from None
        except FileNotFoundError:
            raise fuse.FuseOSError(errno.ENOENT) from None
        except NotADirectoryError:
            raise fuse.FuseOSError(errno.ENOTDIR) from None
        except IsADirectoryError:
            raise fuse.FuseOSError(errno.EISDIR) from None
        except OSError as err:
            raise fuse.FuseOSError(err.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s%r", op, args[:1])
            raise fuse.FuseOSError(errno.EIO) from None

    # -- life cycle ------------------------------------------------------

    def init(self, path):
        if self.on_ready is not None:
            self.on_ready()

    # -- metadata --------------------------------------------------------

    def getattr(self, path, fh=None):
        return self.view.getattr(_vpath(path))

    def getattr_into(self, path, buf):
        """Fill the kernel's ``struct stat`` at *buf* (see :class:`_FUSE`)."""
        _fill_stat(buf.contents, self.view.getattr(_vpath(path)))

    # fusepy installs _FUSE.readdir because fuse.Operations defines readdir;
    # that one calls readdir_into below, never fuse.Operations.readdir.

    def readdir_into(self, path, buf, filler):
        """List a directory straight into libfuse's buffer (see _FUSE.readdir).

        Mode and inode with each name give the kernel d_type, so a walk
        (find, fts) need not look up every file to learn that it is not a
        directory.  One stat buffer is reused: libfuse copies the inode and
        type out of it during each filler call.
        """
        node = self.view.lookup(_vpath(path))
        st = fuse.c_stat()
        filler(buf, b".", None, 0)
        filler(buf, b"..", None, 0)
        for name, kid in self.view.children(node).items():
            if kid.error is None:
                attrs = kid.attrs
                st.st_mode = attrs["st_mode"]
                st.st_ino = attrs["st_ino"]
                if filler(buf, name, st, 0):
                    break
            elif filler(buf, name, None, 0):
                # listed, but a lookup answers EIO
                break
        return 0

    def readlink(self, path):
        return self.view.readlink(_vpath(path)).decode(ENCODING)

    def getxattr(self, path, name, position=0):
        want = name.encode(ENCODING)
        for key, value in self.view.xattrs(_vpath(path)):
            if key == want:
                return value
        raise fuse.FuseOSError(errno.ENODATA)

    def listxattr(self, path):
        return [k.decode(ENCODING) for k, _ in self.view.xattrs(_vpath(path))]

    def statfs(self, path):
        return self.view.statfs()

    def access(self, path, amode):
        if amode & os.W_OK:
            raise fuse.FuseOSError(errno.EROFS)
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
        the kernel (default_permissions).

        Directories cannot do the same: libfuse 2 keeps its readdir buffer in
        the handle OPENDIR creates."""
        raise fuse.FuseOSError(errno.ENOSYS)

    def read(self, path, size, offset, fh):
        return self.view.read_file(_vpath(path), size, offset)


# Operations fusepy would register from fuse.Operations' defaults although
# they do nothing here.  Unregistered, libfuse answers them itself (FLUSH once
# with ENOSYS, after which the kernel stops sending it), so a close() or
# closedir() costs no trip through Python.
# opendir too: an unreadable directory fails at readdir() with EIO instead,
# and a walk saves one trip through Python per directory.
for _op in ("release", "opendir", "flush", "fsync", "fsyncdir", "releasedir",
            "ioctl", "destroy"):
    setattr(GitrootFS, _op, None)

_WRITE_OPS = frozenset((
    "chmod", "chown", "create", "link", "mkdir", "mknod", "removexattr",
    "rename", "rmdir", "setxattr", "symlink", "truncate", "unlink", "utimens",
    "write",
))
# fusepy only registers operations the class defines; define the write ones
# so the kernel gets EROFS instead of ENOSYS.
for _op in _WRITE_OPS:
    def _refuse(self, *args, _op=_op):
        raise fuse.FuseOSError(errno.EROFS)
    _refuse.__name__ = _op
    setattr(GitrootFS, _op, _refuse)
del _op, _refuse


_NS = 1_000_000_000


def _fill_stat(st, attrs: dict) -> None:
    """fusepy's set_st_attrs for our fixed set of keys, without its per-key
    hasattr/getattr loop (a third of a cold metadata walk's time)."""
    st.st_mode = attrs["st_mode"]
    st.st_ino = attrs["st_ino"]
    st.st_nlink = attrs["st_nlink"]
    st.st_uid = attrs["st_uid"]
    st.st_gid = attrs["st_gid"]
    st.st_size = attrs["st_size"]
    st.st_rdev = attrs["st_rdev"]
    st.st_blocks = attrs["st_blocks"]
    st.st_blksize = attrs["st_blksize"]
    for field, key in ((st.st_atimespec, "st_atime"), (st.st_mtimespec, "st_mtime"),
                       (st.st_ctimespec, "st_ctime")):
        field.tv_sec, field.tv_nsec = divmod(attrs[key], _NS)


class _FUSE(fuse.FUSE):
    """fusepy's FUSE with a direct getattr and readdir: stat buffers are
    filled from the view's attributes without fusepy's generic conversion."""

    def fgetattr(self, path, buf, fip):
        ctypes.memset(buf, 0, ctypes.sizeof(fuse.c_stat))
        self.operations("getattr_into", path.decode(ENCODING), buf)
        return 0

    def readdir(self, path, buf, filler, offset, fip):
        # fusepy's readdir builds a c_stat per entry through its generic
        # set_st_attrs and encodes every name again; a cold walk of the
        # Debian root lists 8,350 entries this way.
        return self.operations("readdir_into", path.decode(ENCODING), buf, filler)


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


def run_fuse(view: RootView, mountpoint: str, allow_other: bool, on_ready=None,
             debug: bool = False, suid: bool = False) -> None:
    """Serve *view* at *mountpoint* until unmounted (blocks)."""
    ops = GitrootFS(view, on_ready)
    _FUSE(ops, mountpoint, foreground=True, nothreads=True, encoding=ENCODING,
              debug=debug, **mount_options(allow_other, suid))
