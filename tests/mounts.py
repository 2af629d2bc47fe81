"""Mounting with the real gitroot CLI in tests: a context manager,
waiting for a daemon to go, and a check of a mounted tree's listings."""

import json
import os
import stat
import subprocess
import time

from tests.conftest import gitroot_cmd


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Mount:
    def __init__(self, repo, rev, mountpoint, log_file=None):
        self.mountpoint = str(mountpoint)
        os.makedirs(self.mountpoint, exist_ok=True)
        self.pid_file = self.mountpoint + ".pid"
        record = self.mountpoint + ".json"
        args = ["mount", "--repo", repo, rev, self.mountpoint, "--pid-file", self.pid_file,
                "--record", record]
        if log_file:
            args += ["--log-file", log_file]
        gitroot_cmd(*args)
        with open(self.pid_file) as f:
            self.pid = int(f.read())
        with open(record) as f:
            self.record = json.load(f)
        wanted = os.environ.get("GITROOT_FUSE")
        if wanted and self.record["backend"] != wanted:
            self.unmount()
            raise AssertionError(f"asked for {wanted}, the daemon used {self.record}")

    def unmount(self):
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount", "-u", self.mountpoint], check=True)
        wait_gone(self.pid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unmount()


def alive(pid):
    """True while *pid* runs (a zombie waiting for init to reap it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"daemon {pid} still running")


def check_listing_types_and_inodes(mountpoint) -> int:
    """Walk a mounted tree and check that what readdir hands out for every
    entry (d_type: directory, symlink or regular file; d_ino) agrees with
    lstat of that entry; the number of entries checked (the root left out).

    The kernel takes d_type and d_ino from the daemon's readdir (or, with
    readdirplus, from the attributes it sends with each name), so a back
    end that fills them wrong breaks find and ls without any stat failing.
    """
    checked = 0
    for dirpath, _, _ in os.walk(mountpoint):
        with os.scandir(dirpath) as it:
            for entry in it:
                st = os.lstat(entry.path)
                assert entry.inode() == st.st_ino, entry.path
                assert entry.is_dir(follow_symlinks=False) == stat.S_ISDIR(st.st_mode), entry.path
                assert entry.is_symlink() == stat.S_ISLNK(st.st_mode), entry.path
                assert entry.is_file(follow_symlinks=False) == stat.S_ISREG(st.st_mode), entry.path
                checked += 1
    return checked
