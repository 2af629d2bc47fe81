#!/usr/bin/env python3
"""Boot time: a gitroot device vs the same root from ext4 with the stock initramfs.

Usage (as root; see docs/performance.md)::

    /usr/bin/python3 bench/boot.py            # 3 boots of each, alternated
    /usr/bin/python3 bench/boot.py --boots 5
    /usr/bin/python3 bench/boot.py --boots 2 --log-dir DIR  # and every boot's serial log

Both machines boot the same kernel through GRUB from a disk image under
QEMU (TCG, -smp 2, 1 GiB, no network), with the image of
tests/system/systemd_image.py (Debian with systemd; ``--release``, default
bookworm, the release docs/performance.md's figures were measured on):

* ``gitroot``: the medium of a device at release v1 (GRUB's entry names the
  commit; the initramfs made by gitroot's hook mounts it through FUSE under
  an overlay), with the updates disk holding v1 (the boot-time fetch finds
  nothing new, as on most boots);
* ``ext4``: v1's tree copied out of the repository onto an ext4 partition,
  booted with ``root=LABEL=rootfs`` and the initramfs Debian made for the
  kernel before gitroot was installed (stock initramfs-tools).

Times are seconds from QEMU's start to a line on the serial console:
``initramfs`` (the kernel's "Run /init" to systemd's first line),
``multi-user`` ("Reached target multi-user.target") and ``login`` (the
getty's prompt).  The two kinds of boot alternate, so load on the machine
hits both; the ratio of medians is printed per figure.  Also printed: the
size of both initrds.  Results go to bench/results/boot-full-TIME.json or
``--json PATH``.  ``--log-dir DIR`` keeps each boot's serial lines,
timestamped (``KIND-N.log``), to see where the time goes between them.
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests"), HERE]

from results_file import write_results  # noqa: E402
from tests.system import systemd_image as image  # noqa: E402

# systemd's status lines stop reaching ttyS0 once its getty hangs the
# terminal up; its log on the kernel's console does not
LOG_TO_KMSG = "systemd.log_target=kmsg"
MARKS = {
    "kernel-init": "Run /init as init process",
    "systemd": "systemd 2",                         # "systemd 252.x running in system mode"
    "multi-user": "Reached target multi-user.target",     # systemd[1]: ... in the kernel log
    "login": "login:",
}


def ext4_disk(info: dict, where: str) -> str:
    """v1's root on ext4 with the stock initrd, cached next to the build."""
    cached = os.path.join(info["dir"], "bench-ext4-2.img")
    if os.path.exists(cached):
        return cached
    staging = os.path.join(where, "ext4")
    mnt = os.path.join(where, "mnt")
    os.makedirs(mnt)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    subprocess.run([sys.executable, "-m", "gitroot", "mount", "--repo",
                    os.path.join(info["dir"], "publisher.git"), info["commits"]["v1"], mnt],
                   check=True, env=env)
    try:
        image.run("cp", "-a", mnt + "/.", staging)
    finally:
        subprocess.run(["umount", mnt], check=False)
    with open(os.path.join(staging, "etc/fstab"), "w") as f:
        f.write("LABEL=rootfs / ext4 rw,errors=remount-ro 0 1\n")
    boot = os.path.join(staging, "boot")
    version = info["kernel_version"]
    shutil.copy(os.path.join(info["dir"], "stock-initrd.img"),
                os.path.join(boot, f"initrd.img-{version}"))
    os.makedirs(os.path.join(boot, "grub"), exist_ok=True)
    with open(os.path.join(boot, "grub", "grub.cfg"), "w") as f:
        f.write("set timeout=0\nserial --unit=0 --speed=115200\n"
                "terminal_input console serial\nterminal_output console serial\n"
                "menuentry ext4 {\n"
                f"  linux /boot/vmlinuz-{version} console=ttyS0 root=LABEL=rootfs rw panic=5"
                f" {LOG_TO_KMSG}\n"
                f"  initrd /boot/initrd.img-{version}\n}}\n")
    disk = image.grub_disk(staging, cached + ".tmp", "rootfs")
    shutil.rmtree(staging)
    os.rename(disk, cached)
    return cached


def measure(result: image.Boot) -> dict:
    got = {name: result.first(text) for name, text in MARKS.items()}
    if got["kernel-init"] is not None and got["systemd"] is not None:
        got["initramfs"] = got["systemd"] - got["kernel-init"]
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boots", type=int, default=3, help="boots of each kind (default 3)")
    parser.add_argument("--json", default="", help="where to write the results")
    parser.add_argument("--log-dir", default="",
                        help="keep each boot's timestamped serial log here "
                             "(KIND-N.log: where the time goes)")
    parser.add_argument("--release", choices=sorted(image.PACKAGES), default="bookworm",
                        help="the Debian release of the image (default bookworm)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/boot.py: run as root (debootstrap, chroot, mkfs, FUSE)")

    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    info = image.build(args.release, "grub")
    work = tempfile.mkdtemp(prefix="gitroot-bench-boot-", dir="/var/tmp")
    try:
        ext4 = ext4_disk(info, work)
        gitroot_dir = os.path.join(work, "gitroot")
        os.makedirs(gitroot_dir)
        medium = image.make_medium(info, gitroot_dir, good=["v1"],
                                   cmdline=image.CMDLINE + " " + LOG_TO_KMSG)
        updates = image.updates_disk(info, gitroot_dir, "v1")
        runs = {"gitroot": [], "ext4": []}
        for n in range(args.boots):
            for kind in ("gitroot", "ext4"):
                # a fresh copy each time: every boot starts from the same medium
                disk = os.path.join(work, f"{kind}.img")
                image.run("cp", "--sparse=always", medium if kind == "gitroot" else ext4, disk)
                disks = [disk, updates] if kind == "gitroot" else [disk]
                log_path = (os.path.join(args.log_dir, f"{kind}-{n + 1}.log")
                            if args.log_dir else None)
                result = image.qemu_boot(disks, timeout=900, log_path=log_path)
                figures = measure(result)
                if figures["multi-user"] is None or figures["login"] is None:
                    print(f"{kind} boot {n + 1} did not finish:\n{result.tail(40)}")
                    return 1
                runs[kind].append(figures)
                print(f"boot {n + 1} {kind:8}: " + "  ".join(
                    f"{k} {v:.1f} s" for k, v in figures.items() if v is not None), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sizes = {"gitroot": os.path.getsize(os.path.join(info["dir"], "gitroot-initrd.img")),
             "ext4 (stock initramfs)": os.path.getsize(os.path.join(info["dir"],
                                                                    "stock-initrd.img"))}
    print(f"\n{'seconds from QEMU start (median of ' + str(args.boots) + ')':<44}"
          f"{'gitroot':>9}{'ext4':>9}{'ratio':>8}")
    summary = {}
    for name in ("initramfs", "multi-user", "login"):
        g = statistics.median(r[name] for r in runs["gitroot"])
        e = statistics.median(r[name] for r in runs["ext4"])
        summary[name] = {"gitroot": g, "ext4": e, "ratio": g / e}
        label = {"initramfs": "initramfs (Run /init -> systemd)",
                 "multi-user": "multi-user.target reached",
                 "login": "login prompt on ttyS0"}[name]
        print(f"{label:<44}{g:>9.1f}{e:>9.1f}{g / e:>7.2f}x")
    for name, size in sizes.items():
        print(f"initrd {name}: {size / 1e6:.1f} MB")
    write_results({"mode": "full", "boots": args.boots, "runs": runs, "summary": summary,
                   "initrd_bytes": sizes, "machine": platform.node(),
                   "load": os.getloadavg()}, args.json, "boot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
