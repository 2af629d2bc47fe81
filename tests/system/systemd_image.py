"""A Debian systemd image that boots through a boot loader from a disk, for QEMU.

Shared by tests/system/test_systemd_boot.py and bench/boot.py.  One image
per Debian release (:data:`PACKAGES`: trixie, bookworm) and boot loader
(``grub``: SeaBIOS and GRUB on a DOS-partitioned disk; ``systemd-boot``:
OVMF and systemd-boot on a GPT disk with an EFI system partition).  The
image is built the way docs/boot.md tells a reader to: debootstrap with the
packages it names, ``gitroot install-image ROOT --bootloader LOADER
--update-initramfs`` (with systemd-boot also ``--esp DIR``, which lays out
the ESP's loader files), ``gitroot commit``; the medium is made with
``gitroot pin``, ``mark-good`` and ``pin --release`` (which write the
loader's entries and install the kernels), ``mkfs.ext4 -d`` (and
``mkfs.vfat`` + ``mcopy`` for the ESP), with GRUB's own boot code
(grub-mkimage, boot.img) on the BIOS disk.  What the test adds to the image
is only the reporting: a unit that prints what the booted system sees to the
serial console and powers off.

Releases (all signed with an SSH key; the image trusts it):

- ``v1``: the first release;
- ``v2``: a new motd and a rebuilt initrd (its initramfs carries a marker,
  so a boot shows which initrd the loader started);
- ``v3-health``: a health-check unit ordered before boot-complete.target
  fails, so the boot is never marked good;
- ``v3-noinit``: ``/sbin/init`` is gone;
- ``v4-unsigned``: a descendant of v2 without a signature.

The build is cached in tests/rootfs.py's cache under a key of every input;
``build()`` returns its description (paths and commits).
"""

import glob
import inspect
import json
import os
import re
import shutil
import subprocess
import time
from typing import Dict, List, Optional

from tests.conftest import REPO_ROOT, gitroot_cmd
from tests.rootfs import debian_minbase
from tests.system.imagecache import build_key, cached_build, remove_tree, run

# docs/boot.md's package list, plus systemd itself and dbus (logind), per
# Debian release: 13 renamed libfuse2 (64-bit time_t) and its `fuse` is a
# transitional package for fuse3; trixie's image also carries systemd-boot
# (its EFI binary and systemd-bless-boot), which the UEFI variant uses.
_COMMON = ("systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,python3-pygit2,"
           "python3-fusepy,python3-cffi-backend,python3-yaml,python3-requests,"
           "python3-cryptography")
PACKAGES = {
    "trixie": _COMMON + (",fuse3,libfuse2t64,ca-certificates,git,busybox,zstd,e2fsprogs,"
                         "systemd-boot,systemd-boot-efi"),
    "bookworm": _COMMON + ",fuse,ca-certificates,git,busybox,zstd,e2fsprogs",
}
LOADERS = ("grub", "systemd-boot")
BUILD_FORMAT = "2"
MARK = "GITROOT-TEST:"
# no_timer_check: a host too busy for QEMU's emulated timer makes the kernel
# panic at start ("IO-APIC + timer doesn't work"), a try lost to the host
CMDLINE = ("console=ttyS0 boot=gitroot gitroot.root=LABEL=gitroot gitroot.rootfstype=ext4 "
           "panic=5 no_timer_check")
UPDATES = "/srv/updates/os.git"
GRUB_MODULES = ("biosdisk part_msdos ext2 normal linux echo test loadenv regexp serial "
                "terminal configfile search search_label halt reboot")

# Prints what the booted system sees, then powers off (QEMU then exits).
REPORT = r"""#!/bin/sh
say() { echo "GITROOT-TEST: $*"; }
# wait (bounded) until every other start-up job is done
n=0
while [ "$n" -lt 120 ] && systemctl list-jobs --no-legend 2>/dev/null \
        | grep -v -e gitroot-test-report -e getty | grep -q .; do
    sleep 1; n=$((n + 1))
done
# gitroot's units run after multi-user.target as Type=exec (no start job
# waits for them): wait (bounded) until they are done
m=0
for unit in gitroot-mark-good.service gitroot-fetch.service; do
    while [ "$m" -lt 900 ] && [ "$(systemctl show -p SubState --value "$unit")" = running ]; do
        sleep 1; m=$((m + 1))
    done
done
# and until the serial console shows its login prompt (bench/boot.py times it)
while [ "$n" -lt 120 ] && ! systemctl is-active -q serial-getty@ttyS0.service; do
    sleep 1; n=$((n + 1))
done
sleep 2
# Open the console only now: the serial getty's vhangup() at its start
# revokes every descriptor opened on ttyS0 before it, and every later write
# to one would fail (a race with the getty that lost whole reports).
exec >/dev/ttyS0 2>&1
say "release $(cat /etc/gitroot-test-release)"
say "initrd $(cat /run/gitroot-test-initrd 2>/dev/null || echo none)"
# (systemd-boot names the initrd with backslashes, which dash's echo reads)
say "cmdline $(tr '\\' / </proc/cmdline)"
# systemd-boot's variables (UTF-16 after 4 bytes of attributes), none under
# GRUB; through cat (tail on the efivarfs file itself printed nothing in the
# guest), backslashes as slashes, which echo leaves alone
efivar() {
    cat "/sys/firmware/efi/efivars/$1-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f" 2>/dev/null \
        | tail -c +5 | tr -d '\000' | tr '\\' /
}
say "loader-entry $(efivar LoaderEntrySelected)"
say "boot-count-path $(efivar LoaderBootCountPath)"
say "bless $(systemctl show -p Result --value systemd-bless-boot.service) $(systemctl show -p ActiveState --value systemd-bless-boot.service)"
say "bless-log $(journalctl -u systemd-bless-boot.service -o cat --no-pager | tr '\n' '|')"
say "esp-entries $(ls /boot/efi/loader/entries 2>/dev/null | tr '\n' ' ')"
say "debian $(cat /etc/debian_version) python $(python3 -c 'import sys; print(sys.version.split()[0])') kernel $(uname -r)"
say "failed $(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
say "mark-good $(systemctl show -p Result --value gitroot-mark-good.service) $(systemctl show -p ActiveState --value gitroot-mark-good.service)"
say "fetch $(systemctl show -p Result --value gitroot-fetch.service)"
say "fetch-log $(journalctl -u gitroot-fetch.service -o cat --no-pager | tr '\n' '|')"
say "root $(findmnt -n -o FSTYPE /)"
say "var-mount $(systemctl show -p FragmentPath --value var.mount) $(systemctl show -p Requires --value systemd-journal-flush.service)"
say "status-json $(gitroot status --json | tr -d '\n')"
say "log-json $(gitroot log --json | tr -d '\n')"
gitroot status 2>&1 | sed 's/^/GITROOT-TEST: status-line /'
say "done"
sync
if [ -e /etc/gitroot-test-reboot ]; then systemctl reboot; else systemctl poweroff; fi
"""

REPORT_UNIT = """[Unit]
Description=gitroot test: report to the serial console, then power off
After=multi-user.target gitroot-mark-good.service gitroot-fetch.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/gitroot-test-report

[Install]
WantedBy=multi-user.target
"""

# Scenario 6 (a power cut during a fetch) kills QEMU on this script's line:
# the fetch's incoming pack on the medium is there and growing.
TRANSFER_WATCH = r"""#!/bin/sh
pack_dir=/run/gitroot/medium/gitroot/repo.git/objects/pack
first=
n=0
while [ "$n" -lt 1800 ]; do
    for f in "$pack_dir"/tmp_pack_*; do
        [ -f "$f" ] || continue
        size=$(stat -c %s "$f" 2>/dev/null) || continue
        if [ -z "$first" ]; then
            first=$size
        elif [ "$size" -gt $((first + 1048576)) ]; then
            echo "GITROOT-TEST: transfer under way: $first -> $size bytes in ${f##*/}" \
                >/dev/ttyS0
            exit 0
        fi
    done
    sleep 0.5
    n=$((n + 1))
done
"""

TRANSFER_WATCH_UNIT = """[Unit]
Description=gitroot test: say on the console when a fetch's pack arrives
ConditionPathExists=/run/gitroot/booted

[Service]
ExecStart=/usr/local/sbin/gitroot-test-transfer-watch

[Install]
WantedBy=multi-user.target
"""

# copies the initrd's marker to /run, so the booted system can tell which
# initrd the loader started
INITRD_MARK_HOOK = """#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
cp /etc/gitroot-test-release "${DESTDIR}/etc/gitroot-test-initrd"
"""
INITRD_MARK_SCRIPT = """#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
cp /etc/gitroot-test-initrd /run/gitroot-test-initrd
"""

HEALTH_UNIT = """[Unit]
Description=gitroot test: a health check that fails
Before=boot-complete.target
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/bin/false

[Install]
RequiredBy=boot-complete.target
"""


def _key(release: str, loader: str) -> str:
    return build_key((BUILD_FORMAT, release, loader, PACKAGES[release], CMDLINE, REPORT,
                      REPORT_UNIT, INITRD_MARK_HOOK, INITRD_MARK_SCRIPT, HEALTH_UNIT,
                      GRUB_MODULES, TRANSFER_WATCH, TRANSFER_WATCH_UNIT,
                      inspect.getsource(_build), inspect.getsource(_release)))


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _enable(root: str, unit: str, target: str) -> None:
    wants = os.path.join(root, "etc/systemd/system", f"{target}.wants")
    os.makedirs(wants, exist_ok=True)
    link = os.path.join(wants, unit)
    if not os.path.lexists(link):
        os.symlink(f"/etc/systemd/system/{unit}", link)


def _in_root(root: str, *cmd: str) -> None:
    from gitroot.publish.image import chroot_mounts
    with chroot_mounts(root):
        run("chroot", root, *cmd)


def _release(root: str, name: str) -> None:
    _write(os.path.join(root, "etc/gitroot-test-release"), name + "\n")
    _write(os.path.join(root, "etc/motd"), f"gitroot test image, release {name}\n")


def _commit(root: str, repo: str, message: str, key: Optional[str]) -> str:
    args = ["commit", root, "--repo", repo, "--branch", "main", "-m", message]
    if key:
        args += ["--sign-key", key]
    return gitroot_cmd(*args).stdout.strip()


def _build(dest: str, release: str, loader: str) -> None:
    from tests.signing_support import public_key, ssh_key
    timings = {}
    started = time.monotonic()
    base = debian_minbase(release, include=PACKAGES[release])
    timings["debootstrap"] = time.monotonic() - started
    work = dest + ".building"
    remove_tree(work)
    os.makedirs(work)
    from pathlib import Path
    key = ssh_key(Path(work), "release-key", "ed25519")
    root = os.path.join(work, "root")
    run("cp", "-a", base, root)
    for deb in glob.glob(os.path.join(root, "var/cache/apt/archives/*.deb")):
        os.unlink(deb)
    (version,) = os.listdir(os.path.join(root, "lib/modules"))
    # the same root's stock initrd, for bench/boot.py's comparison
    shutil.copy(os.path.join(root, "boot", f"initrd.img-{version}"),
                os.path.join(work, "stock-initrd.img"))
    shutil.copy(os.path.join(root, "boot", f"vmlinuz-{version}"), os.path.join(work, "vmlinuz"))

    # the image, as a reader builds it
    _write(os.path.join(root, "etc/hostname"), "gitroot-test\n")
    _write(os.path.join(root, "etc/fstab"),
           "LABEL=updates /srv/updates ext4 ro,nofail,x-systemd.device-timeout=90s 0 2\n")
    os.makedirs(os.path.join(root, "srv/updates"), exist_ok=True)
    _write(os.path.join(root, "etc/gitroot/allowed_signers"),
           f"release@example.org {public_key(key)}\n")
    _write(os.path.join(root, "etc/systemd/system/gitroot-fetch.service.d/updates.conf"),
           "[Unit]\nAfter=srv-updates.mount\n")
    # the report unit and the initrd marker (test only)
    _write(os.path.join(root, "usr/local/sbin/gitroot-test-report"), REPORT, 0o755)
    _write(os.path.join(root, "etc/systemd/system/gitroot-test-report.service"), REPORT_UNIT)
    _enable(root, "gitroot-test-report.service", "multi-user.target")
    _write(os.path.join(root, "usr/local/sbin/gitroot-test-transfer-watch"), TRANSFER_WATCH,
           0o755)
    _write(os.path.join(root, "etc/systemd/system/gitroot-test-transfer-watch.service"),
           TRANSFER_WATCH_UNIT)
    _enable(root, "gitroot-test-transfer-watch.service", "multi-user.target")
    _write(os.path.join(root, "etc/initramfs-tools/hooks/gitroot-test-mark"),
           INITRD_MARK_HOOK, 0o755)
    _write(os.path.join(root, "etc/initramfs-tools/scripts/init-bottom/gitroot-test-mark"),
           INITRD_MARK_SCRIPT, 0o755)
    _release(root, "v1")
    started = time.monotonic()
    esp = ["--esp", os.path.join(work, "esp")] if loader == "systemd-boot" else []
    gitroot_cmd("install-image", root, "--bootloader", loader, "--cmdline", CMDLINE,
                "--remote", UPDATES, "--update-initramfs", *esp)
    timings["install-image"] = time.monotonic() - started
    with open(os.path.join(root, "etc/gitroot/gitroot.yml"), "a") as f:
        f.write("tries: 2\n")
    # as gitroot installs it for the boot loader (the release keeps it
    # uncompressed), so bench/boot.py compares like with like
    from gitroot.device.initrd import boot_initrd
    with open(os.path.join(root, "boot", f"initrd.img-{version}"), "rb") as f:
        installed, _ = boot_initrd(f.read())
    with open(os.path.join(work, "gitroot-initrd.img"), "wb") as f:
        f.write(installed)

    publisher = os.path.join(work, "publisher.git")
    started = time.monotonic()
    commits: Dict[str, str] = {"v1": _commit(root, publisher, "v1", key)}
    timings["commit v1"] = time.monotonic() - started
    run("git", "clone", "-q", "--bare", publisher, os.path.join(work, "medium-repo.git"))

    _release(root, "v2")
    started = time.monotonic()
    _in_root(root, "update-initramfs", "-u", "-k", version)
    timings["initramfs v2"] = time.monotonic() - started
    started = time.monotonic()
    commits["v2"] = _commit(root, publisher, "v2: new motd, new initrd", key)
    timings["commit v2"] = time.monotonic() - started

    _release(root, "v3-health")
    _write(os.path.join(root, "etc/systemd/system/gitroot-test-health.service"), HEALTH_UNIT)
    wants = os.path.join(root, "etc/systemd/system/boot-complete.target.requires")
    os.makedirs(wants, exist_ok=True)
    os.symlink("/etc/systemd/system/gitroot-test-health.service",
               os.path.join(wants, "gitroot-test-health.service"))
    commits["v3-health"] = _commit(root, publisher, "v3: a failing health check", key)
    shutil.rmtree(wants)
    os.unlink(os.path.join(root, "etc/systemd/system/gitroot-test-health.service"))
    # v3-noinit and v4 descend from v2, not from v3-health
    run("git", "-C", publisher, "update-ref", "refs/heads/main", commits["v2"])
    _release(root, "v3-noinit")
    init = os.path.join(root, "sbin/init")
    target = os.readlink(init)
    os.unlink(init)
    commits["v3-noinit"] = _commit(root, publisher, "v3: no /sbin/init", key)
    os.symlink(target, init)
    run("git", "-C", publisher, "update-ref", "refs/heads/main", commits["v2"])
    _release(root, "v4-unsigned")
    commits["v4-unsigned"] = _commit(root, publisher, "v4: unsigned", None)
    run("git", "-C", publisher, "update-ref", "refs/heads/main", commits["v2"])

    # the ext4 copy of v1's root for the benchmark is made from the commit
    # when needed; the root tree itself is not kept
    shutil.rmtree(root)
    info = {"release": release, "loader": loader, "kernel_version": version,
            "commits": commits, "timings": timings}
    with open(os.path.join(work, "build.json"), "w") as f:
        json.dump(info, f, indent=1)
    os.rename(work, dest)


def build(release: str = "trixie", loader: str = "grub") -> dict:
    """The cached build of *release* booted by *loader* (see the module
    docstring)."""
    if release not in PACKAGES or loader not in LOADERS:
        raise ValueError(f"no image for {release} with {loader}")
    return cached_build(f"sysimage-{release}-{loader}", _key(release, loader),
                        lambda dest: _build(dest, release, loader))


# -- disks ----------------------------------------------------------------

QEMU = "qemu-system-x86_64"
GRUB_DIR = "/usr/lib/grub/i386-pc"


def _device(staging: str, config: str, *args: str, run_dir: str) -> str:
    env = dict(os.environ, GITROOT_RUN_DIR=run_dir, GITROOT_CMDLINE="",
               PYTHONPATH=REPO_ROOT)
    return gitroot_cmd(*args, "--config", config, env=env).stdout


def _ensure_commits(info: dict, repo: str, names: List[str]) -> None:
    for name in names:
        commit = info["commits"][name]
        if subprocess.run(["git", "-C", repo, "cat-file", "-e", commit + "^{commit}"],
                          capture_output=True).returncode != 0:
            run("git", "-C", repo, "fetch", "-q", os.path.join(info["dir"], "publisher.git"),
                f"{commit}:refs/gitroot/incoming/{name}")


def make_medium(info: dict, where: str, good: List[str], trial: Optional[str] = None,
                cmdline: str = CMDLINE) -> str:
    """A disk image the build's boot loader starts: the releases *good*
    marked good in order (the last is the last good release), *trial* pinned
    as the next boot's trial, upgrades not held.  Made with gitroot's own
    commands; with systemd-boot the kernels and entries go to the ESP."""
    loader = info.get("loader", "grub")
    staging = os.path.join(where, "medium")
    repo = os.path.join(staging, "gitroot", "repo.git")
    os.makedirs(os.path.dirname(repo))
    # hard links: git and gitroot replace files, never write into them
    run("cp", "-al", os.path.join(info["dir"], "medium-repo.git"), repo)
    _ensure_commits(info, repo, good + ([trial] if trial else []))
    config = os.path.join(where, "staging.yml")
    if loader == "systemd-boot":
        # the ESP's loader files as install-image --esp laid them out
        boot_dir = os.path.join(where, "esp")
        run("cp", "-a", os.path.join(info["dir"], "esp"), boot_dir)
    else:
        boot_dir = os.path.join(staging, "boot")
    with open(config, "w") as f:
        json.dump({"repository": repo, "state_dir": os.path.join(staging, "gitroot", "state"),
                   "boot_dir": boot_dir,
                   "bootloader": {"type": loader, "cmdline": cmdline},
                   "signature_policy": "none"}, f)
    run_dir = os.path.join(where, "run")
    for name in good:
        commit = info["commits"][name]
        _device(staging, config, "pin", commit, "--tries", "1", run_dir=run_dir)
        _device(staging, config, "mark-good", "--booted", commit, run_dir=run_dir)
    if trial:
        _device(staging, config, "pin", info["commits"][trial], "--tries", "2",
                run_dir=run_dir)
    _device(staging, config, "pin", "--release", run_dir=run_dir)
    if loader == "systemd-boot":
        return efi_disk(boot_dir, staging, os.path.join(where, "disk.img"), "gitroot")
    return grub_disk(staging, os.path.join(where, "disk.img"), "gitroot")


def grub_disk(staging: str, image: str, label: str) -> str:
    """A disk image with one ext4 partition made from *staging* and GRUB's
    BIOS boot code in front of it (what grub-install writes, without loop
    devices: boot.img in the MBR, core.img in the gap before the partition)."""
    size_mb = int(run("du", "-sm", staging).stdout.split()[0]) * 5 // 4 + 200
    part = image + ".part"
    run("mkfs.ext4", "-q", "-L", label, "-d", staging, part, f"{size_mb}M")
    with open(image, "wb") as f:
        f.truncate((size_mb + 1) << 20)
    _write_mbr(image, start=2048, sectors=size_mb << 11)
    run("dd", f"if={part}", f"of={image}", "bs=1M", "seek=1", "conv=notrunc,sparse",
        "status=none")
    os.unlink(part)
    core = image + ".core"
    run("grub-mkimage", "-O", "i386-pc", "-o", core, "-p", "(hd0,msdos1)/boot/grub",
        *GRUB_MODULES.split())
    run("dd", f"if={GRUB_DIR}/boot.img", f"of={image}", "bs=440", "count=1", "conv=notrunc",
        "status=none")
    run("dd", f"if={core}", f"of={image}", "bs=512", "seek=1", "conv=notrunc", "status=none")
    os.unlink(core)
    return image


ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def efi_disk(esp: str, staging: str, image: str, label: str) -> str:
    """A GPT disk image (``sfdisk`` on the file, no loop devices): the EFI
    system partition (vfat, partition name ``esp``, what install-image's
    mount unit names) made from *esp* with ``mkfs.vfat`` and ``mcopy``, then
    the medium (ext4, *label*) made from *staging*."""
    esp_mb = int(run("du", "-sm", esp).stdout.split()[0]) * 3 // 2 + 64
    medium_mb = int(run("du", "-sm", staging).stdout.split()[0]) * 5 // 4 + 200
    with open(image, "wb") as f:
        f.truncate((1 + esp_mb + medium_mb + 1) << 20)
    layout = (f"label: gpt\n"
              f"start=2048, size={esp_mb << 11}, type={ESP_TYPE}, name=esp\n"
              f"start={(1 + esp_mb) << 11}, size={medium_mb << 11}, type={LINUX_TYPE}, "
              f"name={label}\n")
    run("sfdisk", "-q", image, input=layout)
    part = image + ".esp"
    run("mkfs.vfat", "-F", "32", "-n", "ESP", "-C", part, str(esp_mb << 10))
    names = [os.path.join(esp, n) for n in sorted(os.listdir(esp))]
    run("mcopy", "-s", "-p", "-m", "-i", part, *names, "::/",
        env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    run("dd", f"if={part}", f"of={image}", "bs=1M", "seek=1", "conv=notrunc,sparse",
        "status=none")
    os.unlink(part)
    part = image + ".part"
    run("mkfs.ext4", "-q", "-L", label, "-d", staging, part, f"{medium_mb}M")
    run("dd", f"if={part}", f"of={image}", "bs=1M", f"seek={1 + esp_mb}",
        "conv=notrunc,sparse", "status=none")
    os.unlink(part)
    return image


def medium_offset(disk: str) -> int:
    """Byte offset of the medium (the last partition) in *disk*."""
    table = json.loads(run("sfdisk", "--json", disk).stdout)["partitiontable"]
    return table["partitions"][-1]["start"] * table.get("sectorsize", 512)


def _write_mbr(image: str, start: int, sectors: int) -> None:
    """A DOS partition table with one bootable Linux partition (what
    ``sfdisk`` writes for ``start=START, type=83, bootable``)."""
    import struct
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                        start, sectors)
    with open(image, "r+b") as f:
        f.seek(446)
        f.write(entry + bytes(48) + b"\x55\xaa")


def updates_disk(info: dict, where: str, release: Optional[str],
                 git_config: Optional[Dict[str, str]] = None) -> str:
    """The second disk: the publisher's repository with main at *release*
    (None: an empty disk, an update source that cannot be reached), with
    *git_config* set in it (git replaces the hard-linked config file, so
    the cached build keeps its own)."""
    staging = os.path.join(where, "updates")
    os.makedirs(staging)
    if release is not None:
        repo = os.path.join(staging, "os.git")
        run("cp", "-al", os.path.join(info["dir"], "publisher.git"), repo)
        run("git", "-C", repo, "update-ref", "refs/heads/main", info["commits"][release])
        for key, value in (git_config or {}).items():
            run("git", "-C", repo, "config", key, value)
    image = os.path.join(where, "updates.img")
    size_mb = int(run("du", "-sm", staging).stdout.split()[0]) * 5 // 4 + 64
    run("mkfs.ext4", "-q", "-L", "updates", "-d", staging, image, f"{size_mb}M")
    return image


# -- QEMU -----------------------------------------------------------------

class Boot:
    """One QEMU run: serial lines with the seconds since QEMU started."""

    def __init__(self, lines: List[tuple], returncode: int, elapsed: float):
        self.lines = lines
        self.returncode = returncode
        self.elapsed = elapsed

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def reports(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for _, line in self.lines:
            if MARK in line:
                # a getty's prompt may come first on the same line
                key, _, value = line[line.index(MARK) + len(MARK):].strip().partition(" ")
                if key == "status-line":
                    out["status-text"] = out.get("status-text", "") + value + "\n"
                else:
                    out.setdefault(key, value)
        return out

    def json(self, key: str):
        return json.loads(self.reports()[key])

    def first(self, needle: str) -> Optional[float]:
        return next((t for t, line in self.lines if needle in line), None)

    def tail(self, n: int = 60) -> str:
        return "\n".join(line for _, line in self.lines[-n:])


OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


def efi_variables(where: str) -> str:
    """The device's own writable copy of OVMF's variable store, kept beside
    its disk across boots (as a machine keeps its NVRAM)."""
    path = os.path.join(where, "OVMF_VARS.fd")
    if not os.path.exists(path):
        shutil.copyfile(OVMF_VARS, path)
    return path


def qemu_boot(disks: List[str], timeout: float = 600, kernel: Optional[str] = None,
              initrd: Optional[str] = None, append: Optional[str] = None,
              kill_after: Optional[str] = None, log_path: Optional[str] = None,
              slow_disks: Optional[Dict[str, int]] = None, kill_delay: float = 0,
              efi_vars: Optional[str] = None) -> Boot:
    """Boot once (TCG, no network); QEMU exits when the guest powers off or
    reboots (-no-reboot).  *kill_after*: kill QEMU (SIGKILL) when a serial
    line holds this text, *kill_delay* seconds later (a power cut).  *log_path*: the serial lines,
    written as they come (timestamped), to watch a boot or read it after a
    failure.  *slow_disks*: disk -> bytes per second it is read at (QEMU's
    I/O throttling), for a transfer that lasts.  *efi_vars*: boot through
    OVMF (UEFI) with this variable store, not SeaBIOS."""
    import select
    cmd = [QEMU, "-nodefaults", "-display", "none", "-no-reboot", "-m", "1024", "-smp", "2",
           "-accel", "tcg", "-nic", "none", "-serial", "stdio"]
    if os.environ.get("GITROOT_QEMU_MONITOR"):
        # a monitor socket to look inside a hung boot (sendkey alt-sysrq-t)
        cmd += ["-monitor", f"unix:{os.environ['GITROOT_QEMU_MONITOR']},server,nowait"]
    if kernel:
        cmd += ["-kernel", kernel, "-initrd", initrd, "-append", append]
    if efi_vars:
        cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,file={efi_vars}"]
    for disk in disks:
        limit = (slow_disks or {}).get(disk)
        cmd += ["-drive", f"file={disk},format=raw,if=virtio"
                + (f",throttling.bps-read={limit}" if limit else "")]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: List[tuple] = []
    buffer = b""
    log = open(log_path, "a") if log_path else None
    prompt_seen = False
    kill_at: Optional[float] = None
    try:
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise AssertionError(f"QEMU still running after {timeout} s:\n"
                                     + "\n".join(l for _, l in lines[-80:]))
            if kill_at is not None and time.monotonic() >= kill_at:
                proc.kill()
                kill_at = None
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1 if kill_at else 5))
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            now = time.monotonic() - started
            if b"login: " in buffer and not prompt_seen:
                # a getty's prompt ends without a newline: note it as it comes
                complete.append(buffer)
                prompt_seen = True
            for raw in complete:
                line = raw.decode(errors="replace").replace("\r", "").strip()
                # strip terminal escapes systemd and GRUB print
                line = _ANSI.sub("", line)
                lines.append((now, line))
                if log:
                    log.write(f"{now:7.1f} {line}\n")
                    log.flush()
                if kill_after and kill_after in line and kill_at is None:
                    kill_at = time.monotonic() + kill_delay
                    kill_after = None
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if log:
            log.close()
    if buffer:
        lines.append((time.monotonic() - started, buffer.decode(errors="replace").strip()))
    return Boot(lines, proc.returncode, time.monotonic() - started)



_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc")
