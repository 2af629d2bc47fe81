"""``gitroot mount``: serve a commit at a mount point, in the background.

The view is opened (repository, revision, manifest) in the calling process,
so every error about the input is reported before anything is mounted.
Without ``foreground`` the process forks; the child becomes the FUSE daemon
and tells the parent through a pipe when the kernel has finished FUSE_INIT,
i.e. when the mount is usable.  The parent returns only then, or raises
:class:`MountError` with what libfuse printed.

The daemon unmounts cleanly on SIGTERM, SIGINT and SIGHUP (libfuse's own
handlers, installed because Python leaves those signals at SIG_DFL) and
when ``fusermount -u`` unmounts it.

Threading: the daemon runs one FUSE thread; see ``gitroot.fusefs``.
"""

import logging
import logging.handlers
import os
import select
import sys
import time
from typing import Optional

from gitroot.errors import MountError
from gitroot.vfs import RootView, open_view

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0


def mount(repo_path: str, rev: str, mountpoint: str, foreground: bool = False,
          allow_other: Optional[bool] = None, log_file: Optional[str] = None,
          debug: bool = False) -> int:
    """Mount *rev* of *repo_path* at *mountpoint*; returns the daemon's pid."""
    if not os.path.isdir(mountpoint):
        raise MountError(f"{mountpoint}: not a directory")
    view = open_view(repo_path, rev)
    if allow_other is None:
        allow_other = os.geteuid() == 0
    if foreground:
        _serve(view, mountpoint, allow_other, None, debug)
        return os.getpid()
    return _serve_in_background(view, mountpoint, allow_other, log_file, debug)


def _serve(view: RootView, mountpoint: str, allow_other: bool, on_ready, debug: bool) -> None:
    from gitroot.fusefs import run_fuse
    _fixed_mmap_threshold()
    try:
        run_fuse(view, mountpoint, allow_other, on_ready=on_ready, debug=debug)
    except RuntimeError as err:
        # fusepy raises RuntimeError(status) when fuse_main fails; libfuse
        # has already printed the reason on stderr.
        raise MountError(f"{mountpoint}: FUSE mount failed (status {err})") from None


def _fixed_mmap_threshold() -> None:
    """Give every blob buffer over 128 KiB its own mapping, returned on free.

    glibc raises its mmap threshold to the size of the largest buffer freed so
    far, so after one big file every later blob lands on the heap, whose holes
    stay dirty: about 9 MB of the daemon's private memory after reading the
    Debian root.  Setting the threshold turns that adjustment off.
    """
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 * 1024)        # M_MMAP_THRESHOLD
    except (OSError, AttributeError):       # not glibc: nothing to tune
        pass


def _serve_in_background(view: RootView, mountpoint: str, allow_other: bool,
                         log_file: Optional[str], debug: bool) -> int:
    ready_r, ready_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                        # the daemon
        os.close(ready_r)
        os.close(err_r)
        status = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(err_w, 2)      # until ready, libfuse's complaints go to the parent
            _daemon_logging(log_file, debug)

            def ready():
                target = devnull
                if log_file:
                    target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                os.dup2(target, 2)
                os.close(err_w)
                os.write(ready_w, b"ready\n")
                os.close(ready_w)

            _serve(view, mountpoint, allow_other, ready, debug)
            status = 0
        except BaseException as err:    # noqa: B902 - the daemon must never return
            try:
                os.write(2, f"{err}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(status)

    os.close(ready_w)
    os.close(err_w)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        answer = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MountError(f"{mountpoint}: the FUSE daemon (pid {pid}) did not "
                                 f"become ready within {READY_TIMEOUT:.0f} s")
            readable, _, _ = select.select([ready_r], [], [], left)
            if not readable:
                continue
            chunk = os.read(ready_r, 64)
            if not chunk:
                break
            answer += chunk
        if answer.startswith(b"ready"):
            return pid
        os.waitpid(pid, 0)
        detail = _read_all(err_r).decode(errors="replace").strip().replace("\n", "; ")
        raise MountError(f"{mountpoint}: mount failed: {detail or 'the FUSE daemon exited'}")
    finally:
        os.close(ready_r)
        os.close(err_r)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        readable, _, _ = select.select([fd], [], [], 1.0)
        if not readable:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _daemon_logging(log_file: Optional[str], debug: bool) -> None:
    """The daemon logs to --log-file, else to syslog when there is one."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s gitroot[%(process)d]: %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.setFormatter(logging.Formatter("gitroot[%(process)d]: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
