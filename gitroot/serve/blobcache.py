"""A verified, content-addressed cache of inflated blobs, for FUSE passthrough.

With FUSE passthrough (Linux >= 6.9, libfuse >= 3.17; the ``passthrough``
lever of gitroot.serve.libfuse3) the kernel reads an open file straight
from a *backing file* on another filesystem, never asking the daemon.  This
module keeps those backing files: one file per blob, named by the blob's
id, holding its inflated bytes, in one directory on the medium.

The cache is never trusted.  A blob's bytes are hashed against its id (git's
``blob SIZE\\0`` header, SHA-1 or SHA-256 by the id's length) while they are
written, and the file only gets its name (an atomic rename) once they match;
a file found in the cache is hashed again before its first use by each
daemon (:meth:`BlobCache.open_verified`), so a torn write after a power
loss, a rotten sector or an edited file is dropped and refilled instead of
served.  Files are not fsynced: the check at first use is what makes a lost
write harmless, and it costs one read of the file, which the kernel's page
cache then serves the passthrough reads from.

The cache is bounded (*limit* bytes): once full, further blobs are served
the ordinary way (through the daemon).  Nothing evicts: which blobs an old
release no longer needs is for the device's garbage collection to say, and
this prototype does not do it (docs/performance.md, "FUSE passthrough").

Threading: one thread (the FUSE loop); two daemons may share a directory
(files appear by rename, identical whoever writes them).
"""

import hashlib
import logging
import os
from typing import Iterable, Optional

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TMP_SUFFIX = ".tmp"


def _hasher(oid: bytes, size: int):
    h = hashlib.sha1() if len(oid) == 20 else hashlib.sha256()
    h.update(b"blob %d\0" % size)
    return h


class BlobCache:
    """Inflated blobs in *directory*, at most *limit* bytes of them."""

    def __init__(self, directory: str, limit: int):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.limit = limit
        self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.used: Optional[int] = None      # bytes in the cache, counted at the first fill
        self.full_logged = False

    def _count(self) -> int:
        used = 0
        with os.scandir(self.dir_fd) as entries:
            for entry in entries:
                if entry.name.endswith(TMP_SUFFIX):
                    # a write that did not finish (a crash, or another
                    # daemon's write under way: it then just fails its rename)
                    try:
                        os.unlink(entry.name, dir_fd=self.dir_fd)
                    except OSError:
                        pass
                    continue
                try:
                    used += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
        return used

    def open_verified(self, oid: bytes, size: int) -> Optional[int]:
        """A read-only fd of blob *oid*'s cached file once its bytes were
        hashed to *oid*; None if it is not cached.  A file that fails the
        check is removed."""
        name = oid.hex()
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        try:
            h = _hasher(oid, size)
            total = 0
            if os.fstat(fd).st_size == size:
                while True:
                    chunk = os.read(fd, CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
                    h.update(chunk)
            if total == size and h.digest() == oid:
                return fd
        except OSError as err:
            log.warning("blob cache: %s: %s", name, err.strerror or err)
        os.close(fd)
        log.warning("blob cache: %s does not hash to its name: removed", name)
        try:
            os.unlink(name, dir_fd=self.dir_fd)
        except OSError:
            pass
        return None

    def fill(self, oid: bytes, size: int, chunks: Iterable[bytes]) -> Optional[int]:
        """Write blob *oid* from *chunks* (its bytes in order); a read-only
        fd of the cached file, or None if the cache is full or the bytes do
        not hash to *oid* (nothing is then left behind)."""
        if self.used is None:
            self.used = self._count()
        if self.used + size > self.limit:
            if not self.full_logged:
                log.info("blob cache %s is full (%d of %d bytes): further files are "
                         "served without passthrough", self.directory, self.used, self.limit)
                self.full_logged = True
            return None
        name = oid.hex()
        tmp = f".{name}.{os.getpid()}{TMP_SUFFIX}"
        h = _hasher(oid, size)
        total = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400,
                         dir_fd=self.dir_fd)
        except OSError as err:
            log.warning("blob cache: cannot write %s: %s", self.directory, err.strerror or err)
            return None
        done = False
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                for chunk in chunks:
                    h.update(chunk)
                    total += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[out.write(view):]
            if total != size or h.digest() != oid:
                log.warning("blob cache: the bytes read for %s do not hash to it", name)
                return None
            os.rename(tmp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            done = True
            self.used += size
            return os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.dir_fd)
        except OSError as err:
            log.warning("blob cache: cannot write %s: %s", name, err.strerror or err)
            return None
        finally:
            # whatever stopped the write (a full disk, a blob the view
            # cannot read: its error goes on to the caller), no half file stays
            if not done:
                try:
                    os.unlink(tmp, dir_fd=self.dir_fd)
                except OSError:
                    pass
