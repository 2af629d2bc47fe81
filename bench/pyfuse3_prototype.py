#!/usr/bin/env python3
"""A prototype: gitroot's view served through pyfuse3 (libfuse 3's low-level,
inode-based API, async under trio), for bench/mount.py's comparison with the
mfusepy back end (docs/performance.md).  Not part of gitroot: no jail, no
record, read-only operations only.

Usage (what bench/mount.py's variant ``pyfuse3-proto`` runs)::

    python3 bench/pyfuse3_prototype.py --repo REPO REV MOUNTPOINT --pid-file FILE

Debian 12 packages pyfuse3 (python3-pyfuse3, with python3-trio).  The
process forks: the parent returns once the mount answers, as
``gitroot mount`` does.

Threading: one trio task tree, one thread; the view is called from it only.
"""

import argparse
import errno
import os
import sys
import time

import pyfuse3
import trio

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from gitroot.serve.vfs import BLKSIZE, BLOCK, EntryError, open_view  # noqa: E402

CACHE_SECONDS = 86400


class Prototype(pyfuse3.Operations):
    """Inode-based operations: the manifest's stable inode numbers are the
    kernel's node ids (the root's is 1, as pyfuse3 wants)."""

    def __init__(self, view):
        super().__init__()
        self.view = view
        self.paths = {pyfuse3.ROOT_INODE: b"."}      # node id -> a path to it

    def _node(self, inode):
        try:
            return self.view.lookup(self.paths[inode])
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except EntryError:
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _child_path(self, parent_inode, name):
        parent = self.paths[parent_inode]
        return name if parent == b"." else parent + b"/" + name

    def _entry(self, node, path=None):
        mode, ino, nlink, uid, gid, size, rdev, mtime = node.stat
        if path is not None:      # the view keeps a path for directories only
            self.paths.setdefault(ino, path)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.st_mode = mode
        attr.st_nlink = nlink
        attr.st_uid = uid
        attr.st_gid = gid
        attr.st_size = size
        attr.st_rdev = rdev
        attr.st_blksize = BLKSIZE
        attr.st_blocks = (size + BLOCK - 1) // BLOCK
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime
        attr.entry_timeout = attr.attr_timeout = CACHE_SECONDS
        return attr

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        try:
            kid = self.view.children(parent).get(name)
        except (EntryError, NotADirectoryError):
            raise pyfuse3.FUSEError(errno.EIO) from None
        if kid is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if kid.error is not None:
            raise pyfuse3.FUSEError(errno.EIO)
        return self._entry(kid, self._child_path(parent_inode, name))

    async def getattr(self, inode, ctx=None):
        return self._entry(self._node(inode))

    async def readlink(self, inode, ctx):
        self._node(inode)
        return self.view.readlink(self.paths[inode])

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        try:
            kids = list(self.view.children(self._node(fh)).items())
        except EntryError:
            raise pyfuse3.FUSEError(errno.EIO) from None
        for index in range(start_id, len(kids)):
            name, kid = kids[index]
            if kid.error is not None:
                continue
            if not pyfuse3.readdir_reply(token, name, self._entry(kid, self._child_path(fh, name)),
                                         index + 1):
                return

    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        try:
            return self.view.read_file(self.paths[fh], size, off)
        except EntryError:
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def getxattr(self, inode, name, ctx):
        for key, value in self.view.xattrs(self.paths[inode]):
            if key == name:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode, ctx):
        return [key for key, _ in self.view.xattrs(self.paths[inode])]

    async def statfs(self, ctx):
        s = self.view.statfs()
        out = pyfuse3.StatvfsData()
        for key, value in s.items():
            if hasattr(out, key):
                setattr(out, key, value)
        return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("rev")
    parser.add_argument("mountpoint")
    parser.add_argument("--pid-file")
    parser.add_argument("--record")          # accepted, ignored (bench/mount.py)
    args = parser.parse_args()
    view = open_view(args.repo, args.rev)
    pid = os.fork()
    if pid:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open("/proc/self/mountinfo") as f:
                if any(line.split()[4] == os.path.realpath(args.mountpoint) for line in f):
                    os.stat(args.mountpoint)
                    if args.pid_file:
                        with open(args.pid_file, "w") as f:
                            f.write(f"{pid}\n")
                    return 0
            time.sleep(0.005)
        return 1
    os.setsid()
    options = set(pyfuse3.default_options)
    options |= {"fsname=gitroot", "ro", "default_permissions", "allow_other"}
    pyfuse3.init(Prototype(view), args.mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
