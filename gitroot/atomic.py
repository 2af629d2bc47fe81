"""All-or-nothing file updates on the persistent medium.

A power cut at any moment must leave either the old or the new file, never
a torn one: write beside, fsync, rename over, fsync the directory.  Used by
the boot path (state, /run records), the device (boot files, gc) and the
publisher (index.json) alike, so errors are plain :class:`OSError`; each
caller words them for its own user.  Standard library only (boot path).
"""

import contextlib
import os


def fsync_dir(directory: str) -> None:
    """Make a rename or unlink in *directory* durable."""
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace *path* with *data* atomically and durably."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def symlink(target: str, link: str) -> None:
    """Point *link* at *target* atomically and durably."""
    tmp = f"{link}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(os.path.dirname(os.path.abspath(link)))
