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

The boot path (``jail``, docs/boot.md) serves the system's root from the
initramfs, and the daemon must outlive it: run-init deletes every file of
the initramfs and moves /run, /proc, /sys and /dev into the new root, while
the daemon's root directory stays the emptied initramfs.  libgit2 opens pack
files lazily by absolute path and Python imports lazily, so before it says
it is ready the daemon imports what it may still need, opens its log, binds
the repository read-only at the same absolute path inside the jail (a
directory under /run, which moves along with /run) and chroots there.  It
also sets argv[0][0] to '@', which systemd's shutdown takes as "a root
storage daemon: do not kill".

Threading: the daemon runs one FUSE thread; see ``gitroot.serve.fusefs``.
"""

import ctypes
import importlib
import json
import logging
import logging.handlers
import os
import select
import stat
import sys
import time
from typing import Optional

from gitroot.atomic import write_file
from gitroot.boot.state import run_dir
from gitroot.errors import MountError
from gitroot.serve.fusefs import Backend, load_backend, run_fuse
from gitroot.serve.vfs import RootView, open_view

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0


def mount(repo_path: str, rev: str, mountpoint: str, foreground: bool = False,
          allow_other: Optional[bool] = None, log_file: Optional[str] = None,
          debug: bool = False, jail: Optional[str] = None, suid: bool = False,
          record: Optional[str] = None) -> int:
    """Mount *rev* of *repo_path* at *mountpoint*; returns the daemon's pid.

    *jail*: once the mount is ready, the daemon chroots into this directory
    (see the module docstring); needs root.  *suid*: setuid/setgid bits and
    device files take effect (a system root only).  *record*: once ready,
    write what serves the mount there (JSON: back end, binding, library,
    daemon pid, commit, mount point); with a jail it defaults to
    ``/run/gitroot/mount.json`` (:data:`RECORD_NAME` in the run directory),
    for ``gitroot status``.
    """
    if not os.path.isdir(mountpoint):
        raise MountError(f"{mountpoint}: not a directory")
    view = open_view(repo_path, rev)
    # Chosen here, before forking: a missing libfuse is told like any other
    # input error, and the record below can name it.
    backend = load_backend()
    if allow_other is None:
        allow_other = os.geteuid() == 0
    if jail is not None:
        _prepare_jail(jail, view.repo.path)
        if record is None:
            record = os.path.join(run_dir(), RECORD_NAME)
    if foreground:
        on_ready = (lambda: _enter_jail(jail)) if jail is not None else None
        _serve(view, mountpoint, allow_other, on_ready, debug, suid, backend)
        return os.getpid()
    pid = _serve_in_background(view, mountpoint, allow_other, log_file, debug, jail, suid,
                               backend)
    _widen_readahead(mountpoint)
    if record is not None:
        _write_record(record, backend, pid, view, mountpoint)
    return pid


#: The mount record's name in the run directory (see mount()).
RECORD_NAME = "mount.json"

#: Read-ahead of the mount, in KiB: the kernel gives a FUSE mount 128 KiB,
#: which caps sequential reads at 128 KiB requests even where libfuse 3
#: allows 1 MiB ones (max_pages 256).  See docs/performance.md.
READAHEAD_KB = 1024

#: Threads reading blobs ahead of a reader going through the tree in
#: order (gitroot.serve.readahead); GITROOT_READAHEAD=N or =off overrides.
READAHEAD_THREADS = 2


def _widen_readahead(mountpoint: str) -> None:
    """Raise the mount's read-ahead to READAHEAD_KB (root only; a kernel
    that refuses keeps its default, which is only slower)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(f"{READAHEAD_KB}\n")
    except OSError as err:
        log.debug("%s: read-ahead left at the kernel's default: %s", mountpoint, err)


def _write_record(path: str, backend: Backend, pid: int, view: RootView,
                  mountpoint: str) -> None:
    record = dict(backend.record(), pid=pid, commit=view.commit_id,
                  mountpoint=os.path.abspath(mountpoint))
    try:
        write_file(path, (json.dumps(record, sort_keys=True) + "\n").encode())
    except OSError as err:
        # the mount itself is fine; only status will not name the back end
        log.warning("cannot record the mount in %s: %s", path, err)


def read_record(path: Optional[str] = None) -> Optional[dict]:
    """The mount record (see mount()), or None when there is none or it
    cannot be read; *path* defaults to the run directory's."""
    path = path or os.path.join(run_dir(), RECORD_NAME)
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read(65536))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _serve(view: RootView, mountpoint: str, allow_other: bool, on_ready, debug: bool,
           suid: bool = False, backend: Optional[Backend] = None) -> None:
    backend = backend or load_backend()
    log.info("serving commit %s at %s through %s", view.commit_id, mountpoint,
             backend.describe())
    _fixed_mmap_threshold()
    setting = os.environ.get("GITROOT_READAHEAD", "")
    threads = min(int(setting), 8) if setting.isdigit() else READAHEAD_THREADS
    if setting == "off" or threads == 0:
        log.info("read-ahead across files: off (GITROOT_READAHEAD=%s)", setting)
    else:
        try:
            # GITROOT_READAHEAD_LIBS=off: no libraries read ahead (for
            # bench/mount.py's no-libreadahead variant)
            libraries = os.environ.get("GITROOT_READAHEAD_LIBS", "") != "off"
            enabled = view.enable_readahead(threads, libraries=libraries)
        except Exception as err:        # an optimization: never worth a failed mount
            log.warning("read-ahead across files: off (%s)", err)
        else:
            if enabled:
                log.info("read-ahead across files: %d thread(s)%s", threads,
                         "" if libraries else ", libraries not read ahead")
            else:
                log.info("read-ahead across files: off (libgit2 cannot be called "
                         "through ctypes here)")
    try:
        run_fuse(view, mountpoint, allow_other, on_ready=on_ready, debug=debug, suid=suid,
                 backend=backend)
    except RuntimeError as err:
        # fusepy raises RuntimeError(status) when fuse_main fails; libfuse
        # has already printed the reason on stderr.
        raise MountError(f"{mountpoint}: FUSE mount failed (status {err})") from None
    finally:
        view.close()


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
        # one arena for all threads: each read-ahead thread's own arena kept
        # its freed memory dirty (after a full read of the Debian root,
        # 31.9 MB with two threads against 28.5 MB without any)
        libc.mallopt(-8, 1)                 # M_ARENA_MAX
    except (OSError, AttributeError):       # not glibc: nothing to tune
        pass


def _serve_in_background(view: RootView, mountpoint: str, allow_other: bool,
                         log_file: Optional[str], debug: bool, jail: Optional[str] = None,
                         suid: bool = False, backend: Optional[Backend] = None) -> int:
    """Fork the daemon; return its pid once the kernel finished FUSE_INIT."""
    ready_r, ready_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                        # the daemon
        os.close(ready_r)
        os.close(err_r)
        _run_daemon(view, mountpoint, allow_other, log_file, debug, jail, suid, backend,
                    ready_w, err_w)
    os.close(ready_w)
    os.close(err_w)
    try:
        return _wait_until_ready(pid, mountpoint, ready_r, err_r)
    finally:
        os.close(ready_r)
        os.close(err_r)


def _run_daemon(view: RootView, mountpoint: str, allow_other: bool, log_file: Optional[str],
                debug: bool, jail: Optional[str], suid: bool, backend: Optional[Backend],
                ready_w: int, err_w: int) -> None:
    """The forked daemon: serve until unmounted, then exit; never returns."""
    status = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(err_w, 2)      # until ready, libfuse's complaints go to the parent
        _daemon_logging(log_file, debug)

        def ready():
            # Called by libfuse (FUSE_INIT) on its thread: an exception
            # here would be swallowed by ctypes, so a failure is told to
            # the parent directly.
            try:
                target = devnull
                if log_file:
                    target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                     0o640)
                if jail is not None:
                    _enter_jail(jail)
            except BaseException as err:    # noqa: B902
                os.write(err_w, f"{err}\n".encode())
                os._exit(1)
            os.dup2(target, 2)
            os.close(err_w)
            os.write(ready_w, b"ready\n")
            os.close(ready_w)

        _serve(view, mountpoint, allow_other, ready, debug, suid, backend)
        status = 0
    except BaseException as err:    # noqa: B902 - the daemon must never return
        try:
            os.write(2, f"{err}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(status)


def _wait_until_ready(pid: int, mountpoint: str, ready_r: int, err_r: int) -> int:
    """Wait for the daemon's "ready" (FUSE_INIT done) or its failure."""
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
    if log_file and _is_char_device(log_file):
        # /dev/kmsg (the boot path): one record per message; the kernel
        # stamps the time, and opened now it keeps working in the jail.
        # Not in append mode: that seeks, which /dev/kmsg refuses (EINVAL).
        handler: logging.Handler = logging.FileHandler(log_file, mode="w")
        handler.setFormatter(logging.Formatter("gitroot[%(process)d]: %(message)s"))
    elif log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s gitroot[%(process)d]: %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.setFormatter(logging.Formatter("gitroot[%(process)d]: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


# -- the boot path: a daemon that outlives the initramfs -----------------

_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096

# Modules the daemon may import after it entered the jail, where the
# initramfs's Python files are gone: exception logging (traceback reads
# sources through linecache and tokenize) and the codecs fusepy uses.
LATE_IMPORTS = ("traceback", "linecache", "tokenize", "encodings.latin_1",
                 "encodings.utf_8")


def _prepare_jail(jail: str, repo_dir: str) -> None:
    """Make *repo_dir* appear at the same absolute path inside *jail*.

    A read-only bind mount: the daemon only reads the repository, and the
    bind keeps the mount it lives on busy, so the medium is not unmounted
    under the root at shutdown (systemd remounts it read-only instead).
    Done once; a second mount from the same repository (a fallback) reuses it.
    """
    repo_dir = os.path.realpath(repo_dir)
    inside = os.path.join(os.path.realpath(jail), repo_dir.lstrip("/"))
    try:
        os.makedirs(inside, exist_ok=True)
        if os.path.samestat(os.stat(inside), os.stat(repo_dir)):
            return
    except OSError as err:
        raise MountError(f"{jail}: cannot prepare the jail: {err.strerror or err}") from None
    _bind_mount(repo_dir, inside, _MS_BIND)
    _bind_mount(repo_dir, inside, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)


def _bind_mount(source: str, target: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(os.fsencode(source), os.fsencode(target), None,
                  ctypes.c_ulong(flags), None) != 0:
        code = ctypes.get_errno()
        raise MountError(f"cannot bind {source} into the jail at {target}: "
                         f"{os.strerror(code)}")


def _enter_jail(jail: str) -> None:
    """Import what is still to be imported, then chroot into *jail*."""
    for name in LATE_IMPORTS:
        importlib.import_module(name)
    _mark_root_storage_daemon()
    os.chroot(jail)
    os.chdir("/")


def _mark_root_storage_daemon() -> None:
    """Set argv[0][0] to '@' in place, so systemd's shutdown spares us.

    systemd's "root storage daemons" convention: processes run by root
    whose argv[0] starts with '@' are not killed at shutdown, since the
    root filesystem depends on them.  argv lives at arg_start (field 48 of
    /proc/self/stat); the first byte is overwritten, which needs no privilege.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            arg_start = int(f.read().rsplit(b")", 1)[1].split()[45])
        ctypes.memmove(arg_start, b"@", 1)
    except (OSError, IndexError, ValueError) as err:
        log.warning("cannot mark the daemon as a root storage daemon: %s", err)
