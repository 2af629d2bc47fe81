"""A real Debian root filesystem for round-trip tests and benchmarks.

``debian_minbase(SUITE)`` runs ``debootstrap --variant=minbase SUITE`` once
and keeps the result in a cache directory (``GITROOT_ROOTFS_CACHE``, default
``/var/tmp/gitroot-cache``), so a test run and a benchmark run share it.  It
builds into a temporary directory and renames it into place, so an
interrupted build is never mistaken for a finished one.  A second caller
waits on a lock file while the first builds.

debootstrap picks the release's default mirror itself; set
``GITROOT_DEBIAN_MIRROR`` to use another one.
"""

import fcntl
import os
import shutil
import subprocess
from typing import Optional

DEFAULT_CACHE = "/var/tmp/gitroot-cache"


def cache_dir() -> str:
    return os.environ.get("GITROOT_ROOTFS_CACHE", DEFAULT_CACHE)


def host_release(os_release: str = "/etc/os-release") -> str:
    """This machine's Debian release (``trixie``, ``bookworm``), from os-release."""
    try:
        with open(os_release) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "VERSION_CODENAME" and value.strip('"'):
                    return value.strip('"')
    except OSError:
        pass
    return "trixie"


def debian_minbase(suite: Optional[str] = None, include: str = "") -> str:
    """Path of a cached ``debootstrap --variant=minbase SUITE`` tree
    (default: this machine's own release)."""
    suite = suite or host_release()
    base = cache_dir()
    os.makedirs(base, exist_ok=True)
    name = f"{suite}-minbase" + (f"+{include.replace(',', '+')}" if include else "")
    target = os.path.join(base, name)
    with open(os.path.join(base, name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(target):
            return target
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
        work = target + ".building"
        if os.path.exists(work):
            shutil.rmtree(work)
        cmd = ["debootstrap", "--variant=minbase"]
        if include:
            cmd.append(f"--include={include}")
        cmd += [suite, work]
        mirror = os.environ.get("GITROOT_DEBIAN_MIRROR")
        if mirror:
            cmd.append(mirror)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        os.rename(work, target)
        return target
