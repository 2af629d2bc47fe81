"""bench/bundle.py --workload initrd: what a release that reruns
update-initramfs costs, with the initrd compressed in the commit (before)
and uncompressed and reproducible (after, what ``gitroot install-image``
sets up), side by side in one run.

Each variant builds a real Debian image the way docs/boot.md says (the
debootstrap root of tests/system/systemd_image.py, ``gitroot install-image
--bootloader grub``, ``update-initramfs`` in a chroot), commits it as v1,
then makes v2 as in issue 14: a new /etc/motd, one small package installed
with dpkg (``less``, from a cached debootstrap's apt cache: no network) and
``update-initramfs -u`` again, and commits it.  Measured: the ``gitroot
bundle --from v1 --to v2`` each variant's publisher serves, the initrds in
the commits, and for the uncompressed one what gitroot installs for the
boot loader (gitroot.device.initrd.boot_initrd): its size, the time to make
it, and the time to unpack it again (on the host: a stand-in for the
kernel's unpacking, which runs the same algorithms).

Variants:

* ``before``: Debian's own settings (zstd level 9 initrd, not reproducible);
  gitroot's initramfs settings and post-update hook removed again;
* ``uncompressed``: the post-update hook, no SOURCE_DATE_EPOCH;
* ``after``: what install-image writes (uncompressed and reproducible).

Runs as root (debootstrap, chroot).  Threading: none.
"""

import glob
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)

VARIANTS = ("before", "uncompressed", "after")
SMALL_PACKAGE = "less"
BRANCH = "stable"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(cmd: List[str], **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout.strip()


def _gitroot(python: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return _run([python, "-m", "gitroot", *args], env=env)


def _in_root(root: str, *cmd: str) -> None:
    sys.path.insert(0, REPO_ROOT)
    from gitroot.publish.image import chroot_mounts
    with chroot_mounts(root):
        _run(["chroot", root, *cmd])


def _initrd(root: str, version: str) -> str:
    return os.path.join(root, "boot", f"initrd.img-{version}")


def _small_package_deb() -> str:
    from rootfs import debian_minbase
    cached = debian_minbase("bookworm", include="less,curl,openssh-client")
    found = glob.glob(os.path.join(cached, "var/cache/apt/archives",
                                   f"{SMALL_PACKAGE}_*.deb"))
    if not found:
        raise RuntimeError(f"no {SMALL_PACKAGE} package in {cached}'s apt cache")
    return found[0]


def build_variant(python: str, base: str, work: str, variant: str, deb: str) -> dict:
    """v1 and v2 of the image in *variant*'s settings, committed to
    WORK/repo.git; returns the commits, initrd paths and timings."""
    from system.systemd_image import CMDLINE
    root = os.path.join(work, "root")
    _run(["cp", "-a", base, root])
    for cached in glob.glob(os.path.join(root, "var/cache/apt/archives/*.deb")):
        os.unlink(cached)
    (version,) = os.listdir(os.path.join(root, "lib/modules"))
    _gitroot(python, "install-image", root, "--bootloader", "grub", "--cmdline", CMDLINE)
    conf = os.path.join(root, "etc/initramfs-tools/conf.d/gitroot")
    hook = os.path.join(root, "etc/initramfs/post-update.d/gitroot")
    if variant == "before":
        os.unlink(hook)
        with open(conf, "w") as f:
            f.write("FSTYPE=ext4\n")
    elif variant == "uncompressed":
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write("".join(line for line in text.splitlines(True)
                            if not line.startswith("SOURCE_DATE_EPOCH")))
    timings: Dict[str, float] = {}
    with open(os.path.join(root, "etc/motd"), "w") as f:
        f.write("v1\n")
    started = time.monotonic()
    _in_root(root, "update-initramfs", "-u", "-k", version)
    timings["update-initramfs v1"] = time.monotonic() - started
    v1_initrd = os.path.join(work, "v1-initrd.img")
    shutil.copyfile(_initrd(root, version), v1_initrd)
    repo = os.path.join(work, "repo.git")
    started = time.monotonic()
    v1 = _gitroot(python, "commit", root, "--repo", repo, "--branch", BRANCH, "-m", "v1")
    timings["commit v1"] = time.monotonic() - started

    # v2: issue 14's release: a motd change, one small package, update-initramfs
    with open(os.path.join(root, "etc/motd"), "w") as f:
        f.write("v2: a new message of the day\n")
    shutil.copy(deb, os.path.join(root, "tmp"))
    _in_root(root, "dpkg", "-i", os.path.join("/tmp", os.path.basename(deb)))
    os.unlink(os.path.join(root, "tmp", os.path.basename(deb)))
    started = time.monotonic()
    _in_root(root, "update-initramfs", "-u", "-k", version)
    timings["update-initramfs v2"] = time.monotonic() - started
    v2_initrd = os.path.join(work, "v2-initrd.img")
    shutil.copyfile(_initrd(root, version), v2_initrd)
    started = time.monotonic()
    v2 = _gitroot(python, "commit", root, "--repo", repo, "--branch", BRANCH, "-m", "v2")
    timings["commit v2"] = time.monotonic() - started
    shutil.rmtree(root)
    return {"repo": repo, "v1": v1, "v2": v2, "v1_initrd": v1_initrd,
            "v2_initrd": v2_initrd, "timings": timings}


def _timed(func: Callable[[], object]) -> tuple:
    started = time.monotonic()
    value = func()
    return value, round(time.monotonic() - started, 2)


def installed(path: str) -> dict:
    """What gitroot installs for the boot loader from the initrd at *path*,
    with each codec: size, seconds to make, seconds to unpack again."""
    sys.path.insert(0, REPO_ROOT)
    import gzip
    from gitroot.device.initrd import boot_initrd, layout
    with open(path, "rb") as f:
        data = f.read()
    out = {"layout": layout(data).rest or "uncompressed"}
    for codec in ("zstd", "gzip"):
        (stream, what), seconds = _timed(lambda: boot_initrd(data, codec))
        if codec == "zstd":
            unpack = lambda: _run_bytes(["zstd", "-q", "-d", "-c"], stream)  # noqa: E731
        else:
            unpack = lambda: gzip.decompress(stream)  # noqa: E731
        back, unpack_seconds = _timed(unpack)
        if back != data:
            raise RuntimeError(f"the installed {codec} initrd does not unpack to the release's")
        out[codec] = {"bytes": len(stream), "compress_s": seconds,
                      "unpack_s": unpack_seconds, "done": what}
    return out


def _run_bytes(cmd: List[str], data: bytes) -> bytes:
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def measure(python: str, workdir: str) -> dict:
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    sys.path.insert(0, REPO_ROOT)
    from rootfs import debian_minbase
    from system.systemd_image import PACKAGES
    _log("debootstrap (cached): the systemd image's packages")
    base = debian_minbase(include=PACKAGES)
    deb = _small_package_deb()
    results = {}
    for variant in VARIANTS:
        work = os.path.join(workdir, variant)
        os.makedirs(work)
        _log(f"{variant}: building v1 and v2")
        built = build_variant(python, base, work, variant, deb)
        bundle = os.path.join(work, "v1-v2.bundle.xz")
        _, seconds = _timed(lambda: _gitroot(python, "bundle", "--repo", built["repo"],
                                             "--from", built["v1"], "--to", BRANCH,
                                             "-o", bundle))
        sizes = {"bundle": os.path.getsize(bundle), "bundle_s": seconds,
                 "v1_initrd": os.path.getsize(built["v1_initrd"]),
                 "v2_initrd": os.path.getsize(built["v2_initrd"])}
        with open(built["v1_initrd"], "rb") as a, open(built["v2_initrd"], "rb") as b:
            sizes["initrd_unchanged"] = a.read() == b.read()
        changed = _run(["git", "--git-dir", built["repo"], "diff", "--name-only",
                        built["v1"], built["v2"]]).splitlines()
        entry = {"sizes": sizes, "timings": built["timings"], "changed_paths": len(changed)}
        if variant != "before":
            entry["installed"] = installed(built["v2_initrd"])
        results[variant] = entry
        _log(f"  {variant}: bundle {sizes['bundle']} bytes; initrd v1 {sizes['v1_initrd']}, "
             f"v2 {sizes['v2_initrd']} bytes, same bytes: {sizes['initrd_unchanged']}")
        shutil.rmtree(work)
    return results


def report(results: dict) -> None:
    before = results["before"]["sizes"]["bundle"]
    print("\nv1 -> v2: /etc/motd changed, one small package (less) installed with dpkg, "
          "update-initramfs -u; Debian 12 systemd image (tests/system/systemd_image.py's "
          "packages), gitroot bundle --from v1 --to v2\n")
    print(f"{'initrd in the commit':44} {'bundle MB':>10} {'vs before':>10} "
          f"{'initrd MB':>10} {'v1 = v2':>8}")
    labels = {"before": "before: zstd -9 (Debian's default)",
              "uncompressed": "uncompressed (post-update hook)",
              "after": "after: uncompressed + reproducible"}
    for variant, entry in results.items():
        s = entry["sizes"]
        print(f"{labels[variant]:44} {s['bundle'] / 1e6:10.2f} "
              f"{s['bundle'] / before:9.3f}x {s['v2_initrd'] / 1e6:10.2f} "
              f"{'yes' if s['initrd_unchanged'] else 'no':>8}")
    after = results["after"].get("installed")
    if after:
        print("\ninstalled for the boot loader (v2's initrd, compressed by gitroot at pin; "
              "unpack on this host)")
        for codec in ("zstd", "gzip"):
            got = after[codec]
            print(f"  {codec:5} {got['bytes'] / 1e6:8.2f} MB  compress {got['compress_s']:6.2f} s"
                  f"  unpack {got['unpack_s']:5.2f} s")
    print()
    for variant, entry in results.items():
        t = entry["timings"]
        print(f"  {variant:13} update-initramfs v2 {t['update-initramfs v2']:5.1f} s, "
              f"commit v2 {t['commit v2']:5.1f} s, bundle {entry['sizes']['bundle_s']:5.1f} s, "
              f"{entry['changed_paths']} paths changed")
