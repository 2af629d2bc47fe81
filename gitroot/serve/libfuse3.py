"""The libfuse 3 back end: mfusepy (PyPI), with libfuse 3's speed features on.

mfusepy speaks fusepy's API on libfuse 3 but turns none of the features on
that make libfuse 3 faster for a tree that never changes; this adapter does,
each one a *lever* with the figure that justifies it in docs/performance.md:

``readdirplus``
    readdir fills every entry with its full ``struct stat`` and
    FUSE_FILL_DIR_PLUS, so libfuse answers the kernel's READDIRPLUS with
    entries *and* attributes: a walk needs no LOOKUP per entry.
``cache_readdir``
    opendir sets ``cache_readdir`` and ``keep_cache``: the kernel keeps a
    directory's listing in its page cache, and a warm walk lists no
    directory through Python again.
``cache_symlinks``
    FUSE_CAP_CACHE_SYMLINKS: the kernel keeps link targets in its page
    cache, so a warm path resolution does not READLINK again.
``plus_always``
    clears FUSE_CAP_READDIRPLUS_AUTO, so the kernel asks for READDIRPLUS on
    every listing, not only once it has seen lookups follow one.
``passthrough``
    FUSE passthrough (a prototype, opt-in): open() hands the kernel a
    backing file from a verified cache of inflated blobs on the medium
    (gitroot.serve.blobcache), and the kernel reads it without asking the
    daemon again.  Needs Linux >= 6.9, libfuse >= 3.17 and root.

``readdirplus`` and ``cache_symlinks`` are on by default, ``cache_readdir``
too where the loaded libfuse passes it on (DEFAULT_LEVERS, with the reasons
for the others).  ``GITROOT_FUSE3_OFF=lever,...`` and
``GITROOT_FUSE3_ON=lever,...`` turn levers off and on, so bench/mount.py
can measure each one on its own; they are not meant for devices.

mfusepy is imported with FUSE_LIBRARY_PATH naming libfuse 3 (fusefs.LIBFUSE3)
and refused if it still loaded another major version.

Threading: libfuse calls in on its one thread (``nothreads``).
"""

import ctypes
import errno
import fcntl
import itertools
import logging
import os
import struct
from typing import Callable, Optional, Tuple

from gitroot.serve.fusefs import (ENCODING, GitrootFS, _vpath, binding_version, errno_of,
                                  fill_stat, find_libfuse3, loaded_library)
from gitroot.git import manifest as mf
from gitroot.serve.blobcache import BlobCache
from gitroot.serve.vfs import RootView


def _import_mfusepy():
    soname = find_libfuse3()
    previous = os.environ.get("FUSE_LIBRARY_PATH")
    os.environ["FUSE_LIBRARY_PATH"] = soname
    try:
        import mfusepy
    finally:
        # the boot script names libfuse 2 here for the fusepy fallback
        if previous is None:
            del os.environ["FUSE_LIBRARY_PATH"]
        else:
            os.environ["FUSE_LIBRARY_PATH"] = previous
    if mfusepy.fuse_version_major != 3:
        raise ImportError(f"mfusepy loaded libfuse {mfusepy.fuse_version_major}."
                          f"{mfusepy.fuse_version_minor}, not libfuse 3")
    return mfusepy


mfusepy = _import_mfusepy()

log = logging.getLogger(__name__)

# libfuse 3's fuse_common.h and fuse.h
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_CAP_CACHE_SYMLINKS = 1 << 23
FUSE_CAP_PASSTHROUGH = 1 << 29
FUSE_READDIR_PLUS = 1 << 0
FUSE_FILL_DIR_PLUS = 1 << 1

#: fuse_main's status when its loop ended with an error, incl. by a signal
LOOP_ENDED = "8"

LEVERS = ("readdirplus", "cache_readdir", "cache_symlinks", "plus_always", "passthrough")
#: (major, minor) of the libfuse mfusepy loaded (its fuse_version())
LIBFUSE_VERSION = (mfusepy.fuse_version_major, mfusepy.fuse_version_minor)
#: libfuse's high-level opendir passes cache_readdir and keep_cache on to
#: the kernel since 3.16 (libfuse commit 98eb808, "Pass cache_readdir and
#: keep_cache from high level API"); before, it drops both.
CACHE_READDIR_SINCE = (3, 16)
#: fuse_file_info has backing_id (and the layout _FileInfo317 reads) since 3.17
PASSTHROUGH_SINCE = (3, 17)
#: On unless turned off.  cache_readdir is on where libfuse passes it on:
#: with libfuse 3.17 a warm walk then sends no READDIR at all, only OPENDIR
#: and RELEASEDIR, and took 1.6x squashfs against 16.4x without it (best of
#: 6; docs/performance.md, "cache_readdir under libfuse 3.17").
#: With libfuse 3.14 it brings nothing -- the kernel drops the listing at
#: every opendir -- and costs a trip through Python per directory opened.
#: plus_always is off: it makes every warm listing a READDIRPLUS
#: (attributes for each entry) where the kernel would send a plain READDIR.
#: passthrough is a prototype and costs disk space: opt-in.
DEFAULT_LEVERS = frozenset(("readdirplus", "cache_symlinks")
                           + (("cache_readdir",) if LIBFUSE_VERSION >= CACHE_READDIR_SINCE
                              else ()))
LEVERS_OFF_ENV = "GITROOT_FUSE3_OFF"
LEVERS_ON_ENV = "GITROOT_FUSE3_ON"
#: the passthrough lever's cache: its directory (default: gitroot-blob-cache
#: in the repository) and its bound in MiB
BLOB_CACHE_ENV = "GITROOT_BLOB_CACHE"
BLOB_CACHE_MB_ENV = "GITROOT_BLOB_CACHE_MB"
BLOB_CACHE_MB = 1024
BLOB_CACHE_DIR = "gitroot-blob-cache"
#: bytes read through the view per step while a blob is written to the cache
BLOB_CHUNK = 1 << 20


def _names(variable: str) -> set:
    return {name.strip() for name in os.environ.get(variable, "").split(",")}


def levers_on() -> frozenset:
    return frozenset((DEFAULT_LEVERS | (_names(LEVERS_ON_ENV) & set(LEVERS)))
                     - _names(LEVERS_OFF_ENV))


#: the binding's distribution (its version is read from its metadata)
DISTRIBUTION = "mfusepy"


def describe() -> Tuple[str, str]:
    """(binding, library) for the mount's log line and record."""
    version = f"{mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor}"
    return (f"{DISTRIBUTION} {binding_version(DISTRIBUTION)}, libfuse {version}",
            loaded_library(mfusepy._libfuse._name))


class _FileInfo317(ctypes.Structure):
    """libfuse 3.17's struct fuse_file_info up to backing_id (fuse_common.h);
    mfusepy's reads poll_events and backing_id as one 64-bit field."""

    _fields_ = [("flags", ctypes.c_int32), ("bits", ctypes.c_uint32),
                ("padding2", ctypes.c_uint32), ("padding3", ctypes.c_uint32),
                ("fh", ctypes.c_uint64), ("lock_owner", ctypes.c_uint64),
                ("poll_events", ctypes.c_uint32), ("backing_id", ctypes.c_int32)]


#: <linux/fuse.h>: _IOW(229, 1, struct fuse_backing_map {int32 fd; uint32
#: flags; uint64 padding}); what libfuse's fuse_passthrough_open() does,
#: which takes a low-level request the high-level API does not hand out
FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501
_libfuse = mfusepy._libfuse
_libfuse.fuse_get_session.restype = ctypes.c_void_p
_libfuse.fuse_get_session.argtypes = [ctypes.c_void_p]
_libfuse.fuse_session_fd.restype = ctypes.c_int
_libfuse.fuse_session_fd.argtypes = [ctypes.c_void_p]


class Passthrough:
    """The passthrough lever: which backing file each open file gets.

    A path's first open in this mount decides for good: the kernel refuses
    to mix a passthrough open with a cached one of the same inode (ETXTBSY)
    while either is open, and the daemon never sees a close.  A file whose
    blob is in the cache (verified here first) or can be put there gets a
    backing id, kept for the mount's life (one per path; the kernel holds
    the backing file, so the cache's fd is closed at once); any other file
    is served through read() as without the lever.
    """

    def __init__(self, cache: BlobCache):
        self.cache = cache
        self.backing: dict = {}         # path -> backing id, 0 for "through read()"
        self.device_fd: Optional[int] = None

    def backing_id(self, operations: GitrootFS, path: str) -> int:
        known = self.backing.get(path)
        if known is not None:
            return known
        backing = 0
        view = operations.view
        node = operations.node(path)
        if node.kind == mf.KIND_FILE and node.oid is not None:
            size = node.stat[5]
            fd = self.cache.open_verified(node.oid, size)
            if fd is None:
                # the path looked up, not node.path: the view keeps a path
                # for directories only (a file's node is kept small)
                fd = self.cache.fill(node.oid, size, _chunks(view, _vpath(path), size))
            if fd is not None:
                try:
                    backing = self._register(fd)
                finally:
                    os.close(fd)
        self.backing[path] = backing
        log.debug("passthrough: %s -> backing id %d", path, backing)
        return backing

    def _register(self, fd: int) -> int:
        if self.device_fd is None:
            session = _libfuse.fuse_get_session(_libfuse.fuse_get_context().contents.fuse)
            self.device_fd = _libfuse.fuse_session_fd(session)
        try:
            return fcntl.ioctl(self.device_fd, FUSE_DEV_IOC_BACKING_OPEN,
                               bytearray(struct.pack("=iIQ", fd, 0, 0)), True)
        except OSError as err:
            log.warning("FUSE passthrough refused a backing file: %s", err.strerror or err)
            return 0


def _chunks(view: RootView, path: bytes, size: int):
    """The file's bytes through the view, which verifies them as it reads."""
    offset = 0
    while offset < size:
        chunk = view.read_file(path, BLOB_CHUNK, offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


class _Operations(GitrootFS):

    def opendir(self, path):
        """Never called: its presence makes mfusepy register _FUSE.opendir."""
        return 0


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with gitroot's error mapping, a direct getattr and
    readdir, and the levers above."""

    def __init__(self, operations: GitrootFS, mountpoint: str, levers: frozenset,
                 passthrough: Optional[Passthrough] = None, **kwargs):
        self.levers = levers
        self.passthrough = passthrough
        self.initialized = False
        if "cache_readdir" not in levers:
            operations.opendir = None        # left to libfuse: no trip through Python
        try:
            super().__init__(operations, mountpoint, **kwargs)
        except RuntimeError as err:
            # libfuse 3's fuse_main reports a loop ended by SIGTERM, SIGINT
            # or SIGHUP as status 8 (libfuse 2: 0); after a mount that
            # served, that is the normal way to stop.
            if not (self.initialized and str(err) == LOOP_ENDED):
                raise
            log.info("FUSE loop ended (libfuse status %s)", err)

    def _wrapper(self, func, *args, **kwargs):
        # mfusepy's own answers EINVAL to anything but an OSError and logs
        # every ENOENT; errors map here as for fusepy (fusefs.errno_of).
        try:
            return func(*args, **kwargs) or 0
        except Exception as err:        # noqa: B902 - mapped in one place
            return -errno_of(err, func.__name__, args)
        except BaseException:           # noqa: B902 - SystemExit and the like: stop serving
            log.critical("stopping FUSE after %s", func.__name__, exc_info=True)
            mfusepy.fuse_exit()
            return -errno.EFAULT

    def init_fuse_3(self, conn, config):
        info = conn.contents
        want = info.want
        if "cache_symlinks" in self.levers:
            want |= FUSE_CAP_CACHE_SYMLINKS & info.capable
        if "plus_always" in self.levers:
            want &= ~FUSE_CAP_READDIRPLUS_AUTO
        if self.passthrough is not None:
            if info.capable & FUSE_CAP_PASSTHROUGH:
                want |= FUSE_CAP_PASSTHROUGH
            else:
                log.warning("the kernel offers no FUSE passthrough (Linux >= 6.9): "
                            "files are served without it")
                self.passthrough = None
        info.want = want
        self.initialized = True
        return super().init_fuse_3(conn, config)

    def open(self, path, fip):
        """With the passthrough lever, the file's backing id; without it,
        ENOSYS (GitrootFS.open: the kernel stops sending OPEN at all)."""
        if self.passthrough is None:
            return super().open(path, fip)
        backing = self.passthrough.backing_id(self.operations, path.decode(ENCODING))
        if backing > 0:
            ctypes.cast(fip, ctypes.POINTER(_FileInfo317)).contents.backing_id = backing
        else:
            fip.contents.keep_cache = 1     # what kernel_cache does without the lever
        return 0

    def fgetattr(self, path, buf, fip):
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        fill_stat(buf.contents, self.operations.stat(path.decode(ENCODING)))
        return 0

    def opendir(self, path, fip):
        info = fip.contents
        info.cache_readdir = 1      # the kernel keeps the listing ...
        info.keep_cache = 1         # ... across opens of the directory
        return 0

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        """List a directory straight into libfuse's buffer.

        With READDIRPLUS each entry carries its full stat and
        FUSE_FILL_DIR_PLUS, so libfuse hands the kernel the attributes along
        with the names (no LOOKUP per entry).  Entries are given offsets
        (their position + 1): libfuse up to 3.15 sends inode 0 -- "ignore
        these attributes" -- for every entry filled with offset 0, so plus
        only works in this mode; the kernel then asks again from the offset
        where a full buffer stopped.  Without plus, mode and inode give
        d_type and d_ino.  One stat buffer is reused: libfuse copies it
        during each filler call.  An entry that cannot be served is listed
        without a stat, and its lookup answers EIO.
        """
        entries = self.operations.listing(path.decode(ENCODING))
        plus = FUSE_FILL_DIR_PLUS if (flags & FUSE_READDIR_PLUS
                                      and "readdirplus" in self.levers) else 0
        st = mfusepy.c_stat()
        position = offset
        if offset < 1 and filler(buf, b".", None, 1, 0):
            return 0
        if offset < 2 and filler(buf, b"..", None, 2, 0):
            return 0
        for name, stat in itertools.islice(entries, max(0, offset - 2), None):
            position = max(position, 2) + 1
            if stat is None:
                if filler(buf, name, None, position, 0):
                    break
                continue
            if plus:
                fill_stat(st, stat)
            else:
                st.st_mode = stat[0]
                st.st_ino = stat[1]
            if filler(buf, name, st, position, plus):
                break
        return 0


def serve(view: RootView, on_ready: Optional[Callable[[], None]], mountpoint: str,
          options: dict, debug: bool) -> None:
    """Serve *view* at *mountpoint* until unmounted (blocks)."""
    levers = levers_on()
    log.debug("libfuse 3 levers on: %s", ", ".join(sorted(levers)) or "none")
    passthrough = None
    if "passthrough" in levers:
        passthrough = _passthrough(view)
    if passthrough is not None:
        # The kernel refuses a passthrough open that also asks to keep the
        # page cache (FOPEN_KEEP_CACHE is outside its FOPEN_PASSTHROUGH_MASK:
        # the open fails with EIO), and libfuse's kernel_cache sets it on
        # every open; _FUSE.open sets it for the files served without.
        options = dict(options)
        options.pop("kernel_cache", None)
    _FUSE(_Operations(view, on_ready), mountpoint, levers, passthrough, foreground=True,
          nothreads=True, encoding=ENCODING, debug=debug, **options)


def _passthrough(view: RootView) -> Optional[Passthrough]:
    if LIBFUSE_VERSION < PASSTHROUGH_SINCE:
        log.warning("FUSE passthrough needs libfuse >= 3.17 (loaded: %d.%d): "
                    "files are served without it", *LIBFUSE_VERSION)
        return None
    directory = (os.environ.get(BLOB_CACHE_ENV)
                 or os.path.join(view.repo.path, BLOB_CACHE_DIR))
    try:
        limit = int(os.environ.get(BLOB_CACHE_MB_ENV) or BLOB_CACHE_MB) << 20
        cache = BlobCache(directory, limit)
    except (OSError, ValueError) as err:
        log.warning("FUSE passthrough off: blob cache %s: %s", directory,
                    getattr(err, "strerror", None) or err)
        return None
    log.info("FUSE passthrough on: blob cache %s, at most %d MiB", directory, limit >> 20)
    return Passthrough(cache)
