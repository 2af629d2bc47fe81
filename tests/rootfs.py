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
import hashlib
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
    if len(name) > 240:
        # a long package list: a digest of it (a file name, with
        # ".building" or ".lock" after it, has 255 bytes at most)
        name = f"{suite}-minbase+{hashlib.sha256(include.encode()).hexdigest()[:16]}"
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


def debian_upgraded(suite: str = "bookworm") -> str:
    """Path of a cached copy of ``debian_minbase(suite)`` after ``apt-get
    upgrade`` from SUITE-updates and SUITE-security.

    The two suites are added to the tree's own ``sources.list`` at the
    archive debootstrap wrote there (the security suite at the same address
    with ``-security`` appended, as Debian lays out its archives), then
    ``apt-get update``, ``apt-get -y upgrade`` and ``apt-get clean`` run in a
    chroot with /proc mounted and services kept from starting.  The packages
    upgraded are listed in ``NAME.upgraded`` beside the tree.
    """
    base = debian_minbase(suite)
    name = f"{suite}-minbase-upgraded"
    target = os.path.join(cache_dir(), name)
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(target):
            return target
        work = target + ".building"
        if os.path.exists(work):
            shutil.rmtree(work)
        subprocess.run(["cp", "-a", base, work], check=True)
        sources = os.path.join(work, "etc/apt/sources.list")
        with open(sources) as stream:
            first = next(line.split() for line in stream if line.startswith("deb "))
        archive = first[1]
        with open(sources, "a") as stream:
            stream.write(f"deb {archive} {suite}-updates main\n"
                         f"deb {archive}-security {suite}-security main\n")
        resolv = os.path.join(work, "etc/resolv.conf")
        resolv_before = None
        if os.path.lexists(resolv):
            with open(resolv, "rb") as stream:
                resolv_before = stream.read()
            os.unlink(resolv)
        shutil.copyfile("/etc/resolv.conf", resolv)
        policy = os.path.join(work, "usr/sbin/policy-rc.d")
        with open(policy, "w") as stream:
            stream.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        proc_dir = os.path.join(work, "proc")
        subprocess.run(["mount", "--bind", "/proc", proc_dir], check=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        try:
            for cmd in (["apt-get", "-q", "update"],
                        ["apt-get", "-q", "-y", "upgrade"],
                        ["apt-get", "clean"]):
                proc = subprocess.run(["chroot", work, *cmd], capture_output=True, text=True,
                                      env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed in the chroot:\n"
                                       f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
                if cmd[-1] == "upgrade":
                    upgraded = [line.split()[1] for line in proc.stdout.splitlines()
                                if line.startswith("Unpacking ")]
        finally:
            subprocess.run(["umount", proc_dir], check=False)
        os.unlink(policy)
        os.unlink(resolv)
        if resolv_before is not None:     # the tree as debootstrap left it
            with open(resolv, "wb") as stream:
                stream.write(resolv_before)
        with open(target + ".upgraded", "w") as stream:
            stream.write("\n".join(upgraded) + "\n")
        os.rename(work, target)
        return target
