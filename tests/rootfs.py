"""A real Debian root filesystem for round-trip tests and benchmarks.

``debian_minbase()`` runs ``debootstrap --variant=minbase bookworm`` once and
keeps the result in a cache directory (``GITROOT_ROOTFS_CACHE``, default
``/var/tmp/gitroot-cache``), so a test run and a benchmark run share it.  It
builds into a temporary directory and renames it into place, so an
interrupted build is never mistaken for a finished one.  A second caller
waits on a lock file while the first builds.
"""

import fcntl
import os
import shutil
import subprocess

DEFAULT_CACHE = "/var/tmp/gitroot-cache"
MIRROR = os.environ.get("GITROOT_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def cache_dir() -> str:
    return os.environ.get("GITROOT_ROOTFS_CACHE", DEFAULT_CACHE)


def debian_minbase(suite: str = "bookworm", include: str = "") -> str:
    """Path of a cached ``debootstrap --variant=minbase SUITE`` tree."""
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
        cmd += [suite, work, MIRROR]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        os.rename(work, target)
        return target
