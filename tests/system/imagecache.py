"""Boot images built once and cached by their inputs, for the QEMU tests and
bench/boot.py.

A build is a directory ``KIND-KEY`` in the shared cache (``tests.rootfs``'s
``cache_dir()``), where KEY digests everything the build is made from: the
caller's own parts (package lists, test scripts, the source of its build
function) and gitroot's boot-relevant sources (the hook, the boot script,
the systemd units and the Python package).  A change to any of them makes a
new key, so a test never boots an image of older code.

Threading and processes: several checkouts (branches, CI, benchmarks) share
the cache and may boot their own builds at the same time.  One lock file
per kind serialises building and pruning; a build is made in
``KEY.building`` and renamed into place, so a killed build is never taken
for a finished one; a build goes only when no one has used it for
:data:`STALE_AFTER` (each use touches its ``build.json``).
"""

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from typing import Callable, Iterable, List

from tests.conftest import REPO_ROOT
from tests.rootfs import cache_dir

STALE_AFTER = 2 * 86400     # drop a cached build unused this long (other branches' too)


def run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run *cmd*; a failure raises with the command and the tails of its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def gitroot_sources() -> List[str]:
    """What of gitroot goes into a boot image: hook, boot script, units, package."""
    sources = [os.path.join(REPO_ROOT, p) for p in ("hooks/gitroot", "initramfs/gitroot")]
    sources += sorted(glob.glob(os.path.join(REPO_ROOT, "systemd", "*")))
    sources += sorted(glob.glob(os.path.join(REPO_ROOT, "gitroot", "**", "*.py"),
                                recursive=True))
    return sources


def build_key(parts: Iterable[str]) -> str:
    """A short digest of the caller's *parts* and of :func:`gitroot_sources`."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in gitroot_sources():
        digest.update(os.path.relpath(path, REPO_ROOT).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()[:16]


def remove_tree(path: str) -> None:
    """rmtree, but never through a mount: a build killed inside a chroot
    leaves /proc, /sys and the host's /dev mounted in it."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(real + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4].startswith(real + "/") for line in f):
            raise AssertionError(f"{path} still has mounts inside; not removing it")
    shutil.rmtree(path, ignore_errors=True)


def cached_build(kind: str, key: str, build: Callable[[str], None]) -> dict:
    """The build ``KIND-KEY``, made by ``build(dest)`` if it is not cached.

    *build* must write ``dest/build.json`` (a JSON object describing the
    build) and leave *dest* complete; it is given ``dest`` and builds where
    it likes (``dest + ".building"`` then a rename is the convention).
    Returns that object with ``"dir"`` set to *dest*.
    """
    base = cache_dir()
    os.makedirs(base, exist_ok=True)
    dest = os.path.join(base, f"{kind}-{key}")
    with open(os.path.join(base, f"{kind}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Every build holds this lock, so a *.building seen here was
        # abandoned; a finished build goes only when long unused.
        for stale in glob.glob(os.path.join(base, f"{kind}-*")):
            if stale == dest or stale.endswith(".lock"):
                continue
            try:
                unused = time.time() - os.stat(os.path.join(stale, "build.json")).st_mtime
            except OSError:
                unused = STALE_AFTER + 1
            if unused > STALE_AFTER:
                remove_tree(stale)
        if not os.path.isdir(dest):
            started = time.monotonic()
            build(dest)
            print(f"built {dest} in {time.monotonic() - started:.0f} s")
        os.utime(os.path.join(dest, "build.json"))     # in use
    with open(os.path.join(dest, "build.json")) as f:
        info = json.load(f)
    info["dir"] = dest
    return info
