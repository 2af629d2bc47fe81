"""The libfuse 2 back end: fusepy, as Debian 12 packages it (the fallback).

libfuse 2's high-level API has no readdirplus (the kernel looks up every
entry a walk meets), no directory cache, 128 KiB reads and no symlink
cache; docs/performance.md measures what that costs against libfuse 3.

Threading: libfuse calls in on its one thread (``nothreads``).
"""

import ctypes
import errno
import os
from typing import Callable, Optional, Tuple

try:                            # Debian's python3-fusepy names the module fusepy
    import fusepy as fuse
except ImportError:             # PyPI's fusepy installs it as fuse
    import fuse

from gitroot.serve.fusefs import (ENCODING, WRITE_OPS, GitrootFS, binding_version, errno_of,
                                  fill_stat, loaded_library)
from gitroot.serve.vfs import RootView


#: the binding's distribution (its version is read from its metadata)
DISTRIBUTION = "fusepy"


def describe() -> Tuple[str, str]:
    """(binding, library) for the mount's log line and record."""
    return (f"{DISTRIBUTION} {binding_version(DISTRIBUTION)}",
            loaded_library(fuse._libfuse._name))


class _FUSE(fuse.FUSE):
    """fusepy's FUSE with a direct getattr and readdir: stat buffers are
    filled from the view's attributes without fusepy's generic conversion."""

    def fgetattr(self, path, buf, fip):
        ctypes.memset(buf, 0, ctypes.sizeof(fuse.c_stat))
        fill_stat(buf.contents, self.operations("stat", path.decode(ENCODING)))
        return 0

    def readdir(self, path, buf, filler, offset, fip):
        # fusepy's readdir builds a c_stat per entry through its generic
        # set_st_attrs and encodes every name again; a cold walk of the
        # Debian root lists 8,350 entries this way.
        return self.operations("readdir_into", path.decode(ENCODING), buf, filler)


class _Operations(GitrootFS):

    def __call__(self, op, *args):
        # fusepy dispatches every operation through here: errors are mapped
        # in one place (fusefs.errno_of) into the OSError fusepy answers.
        method = getattr(self, op, None)
        if method is None:
            raise OSError(errno.EROFS if op in WRITE_OPS else errno.ENOSYS, op)
        try:
            return method(*args)
        except Exception as err:        # noqa: B902 - mapped in one place
            code = errno_of(err, op, args)
        raise OSError(code, os.strerror(code))

    def readdir_into(self, path, buf, filler):
        """List a directory straight into libfuse's buffer.

        Mode and inode with each name give the kernel d_type, so a walk
        (find, fts) need not look up every file to learn that it is not a
        directory.  One stat buffer is reused: libfuse copies the inode and
        type out of it during each filler call.
        """
        entries = self.listing(path)        # looks the directory up first
        st = fuse.c_stat()
        filler(buf, b".", None, 0)
        filler(buf, b"..", None, 0)
        for name, stat in entries:
            if stat is not None:
                st.st_mode = stat[0]
                st.st_ino = stat[1]
                if filler(buf, name, st, 0):
                    break
            elif filler(buf, name, None, 0):
                # listed, but a lookup answers EIO
                break
        return 0


def serve(view: RootView, on_ready: Optional[Callable[[], None]], mountpoint: str,
          options: dict, debug: bool) -> None:
    """Serve *view* at *mountpoint* until unmounted (blocks)."""
    _FUSE(_Operations(view, on_ready), mountpoint, foreground=True, nothreads=True,
          encoding=ENCODING, debug=debug, **options)
