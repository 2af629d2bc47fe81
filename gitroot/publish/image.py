"""Put gitroot into an image's root tree (``gitroot install-image ROOT``).

What a device needs, installed the one way the documentation describes and
the QEMU boot tests use:

- the ``gitroot`` package in ``ROOT/usr/lib/python3/dist-packages``,
  compiled by the image's own python3, and the ``/usr/bin/gitroot`` command
  the systemd units and operators call;
- the initramfs hook and boot script, and initramfs-tools' settings
  (:data:`INITRAMFS_CONF`): ``FSTYPE=ext4`` so it copies the medium's
  fsck, and a reproducible initrd (``SOURCE_DATE_EPOCH``) that the
  post-update hook (``/etc/initramfs/post-update.d/gitroot``) keeps
  uncompressed, which gitroot compresses only when it installs it for the
  boot loader;
- the systemd units, enabled, with drop-ins that keep systemd from trying
  to unmount what the FUSE daemon still serves at shutdown;
- ``/etc/gitroot/gitroot.yml`` (unless the image has one) naming the medium
  where the initramfs leaves it, the key locations of docs/signing.md and the
  boot loader;
- with systemd-boot, a mount unit for the EFI system partition at
  ``boot_dir`` (``/boot/efi``), and, with ``--esp DIR``, the ESP's own
  files laid out in DIR: the image's systemd-boot as the removable-media
  loader ``EFI/BOOT/BOOTX64.EFI`` and ``loader/loader.conf`` (the medium
  recipe then writes the releases' kernels and entries beside them);
- a check that the image holds the Debian packages gitroot runs with
  (:data:`RUNTIME_PACKAGES`): a missing one is named before the image ships.

It runs on the build host, as root when ``--update-initramfs`` asks for a
chroot.  Nothing here runs on the device.
"""

import logging
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from gitroot.errors import GitrootError, UsageError

log = logging.getLogger(__name__)

PYTHON_DIR = "usr/lib/python3/dist-packages"
UNIT_DIR = "usr/lib/systemd/system"
UNITS = ("gitroot-fetch.service", "gitroot-fetch.timer", "gitroot-mark-good.service",
         "gitroot-migrate.service")
ENABLE = {"gitroot-fetch.service": "multi-user.target.wants",
          "gitroot-mark-good.service": "multi-user.target.wants",
          "gitroot-fetch.timer": "timers.target.wants",
          "gitroot-migrate.service": "sysinit.target.wants"}

#: (Debian package, a path in the image that shows it is installed)
RUNTIME_PACKAGES: Tuple[Tuple[str, str], ...] = (
    ("python3", "usr/bin/python3"),
    ("python3-pygit2", f"{PYTHON_DIR}/pygit2"),
    ("python3-fusepy", f"{PYTHON_DIR}/fusepy.py"),
    ("python3-cffi-backend", f"{PYTHON_DIR}/_cffi_backend.cpython-*.so"),
    ("python3-yaml", f"{PYTHON_DIR}/yaml"),
    ("python3-requests", f"{PYTHON_DIR}/requests"),
    ("python3-cryptography", f"{PYTHON_DIR}/cryptography"),
    ("fuse (Debian 12) or fuse3 (Debian 13)", "usr/bin/fusermount*"),
    ("git", "usr/bin/git"),
    ("initramfs-tools", "usr/sbin/update-initramfs"),
    ("ca-certificates", "etc/ssl/certs/ca-certificates.crt"),
    ("e2fsprogs", "usr/sbin/e2fsck"),
)
#: what a systemd-boot image needs besides: the loader's EFI binary, and
#: systemd-bless-boot, which blesses a counted entry at boot-complete.target
SYSTEMD_BOOT_PACKAGES: Tuple[Tuple[str, str], ...] = (
    ("systemd-boot-efi", "usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
    ("systemd-boot", "usr/lib/systemd/systemd-bless-boot"),
)
SYSTEMD_BOOT_EFI = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
# UEFI's removable-media path: firmware with an empty boot order (a new
# device, a fresh OVMF variable store) starts it without any NVRAM entry
ESP_LOADER_PATHS = ("EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi")
LOADER_CONF = """\
# systemd-boot's settings, written by gitroot install-image.  No menu and no
# "default": the loader boots the first entry in sort-key order (gitroot's
# trial, last good, booted, previous good), and an entry whose tries are
# used up sorts last, so it falls back by itself (docs/boot.md).
timeout 0
editor no
"""
ESP_MOUNT_UNIT = """\
# Installed by gitroot install-image: the EFI system partition, where
# systemd-boot reads the releases' kernels and gitroot's entries.  gitroot
# writes them here; systemd-bless-boot blesses the trial's entry here.
[Unit]
Description=gitroot: the EFI system partition
Documentation=file:///usr/share/doc/gitroot/boot.md
Before=local-fs.target

[Mount]
What={what}
Where={where}
Type=vfat
Options=umask=0077,noatime

[Install]
WantedBy=local-fs.target
"""
# fstab's device names and the udev links that name the same device
_DEVICE_LINKS = {"LABEL": "by-label", "UUID": "by-uuid", "PARTUUID": "by-partuuid",
                 "PARTLABEL": "by-partlabel"}

# Mount points the FUSE daemon keeps busy until power-off (it is spared by
# systemd's shutdown, see docs/boot.md): without DefaultDependencies=no,
# systemd tries to unmount each at shutdown, fails, and prints FAILED.
# systemd-shutdown remounts what is left read-only at the very end.
KEPT_MOUNTS = ("run-gitroot-medium.mount", "run-gitroot-lower.mount",
               "run-gitroot-overlay.mount", "run-gitroot-jail.mount",
               "run-gitroot-jail-run-gitroot-medium-gitroot-repo.git.mount")
KEPT_MOUNT_DROPIN = """\
# Installed by gitroot install-image.  The FUSE daemon that serves the root
# keeps this mount busy until power-off; stopping it at shutdown can only
# fail (and print FAILED).  systemd-shutdown remounts it read-only last.
[Unit]
DefaultDependencies=no
"""

# Sourced by mkinitramfs (and copied into the initrd, where it is harmless).
# The release keeps its initrd uncompressed so that one which differs
# little from the last travels as a small delta; gitroot compresses it when
# it installs it for the boot loader (gitroot.device.initrd).  Neither
# Debian 12's nor 13's mkinitramfs can write it uncompressed (COMPRESS has
# no "none"), so it writes gzip at its fastest level and the post-update
# hook (hooks/post-update, /etc/initramfs/post-update.d/gitroot) rewrites
# it uncompressed.  A fixed
# SOURCE_DATE_EPOCH makes mkinitramfs clamp every mtime and write the cpio
# with --reproducible (inode numbers counted, not the build tree's), so an
# initrd rebuilt from the same files has the same bytes and costs nothing.
INITRAMFS_CONF = """\
# Written by gitroot install-image (docs/boot.md).
# initramfs-tools' fsck hook copies e2fsck for the medium
FSTYPE=ext4
# decompressed at once by /etc/initramfs/post-update.d/gitroot: the release
# keeps it uncompressed, gitroot compresses it for the boot loader
COMPRESS=gzip
COMPRESSLEVEL=1
# a reproducible initrd: the same files give the same bytes
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1}"
"""

DEFAULT_CONFIG = """\
# gitroot's device configuration (docs/configuration.md), written by
# gitroot install-image.  The initramfs leaves the persistent medium at
# /run/gitroot/medium.
repository: /run/gitroot/medium/gitroot/repo.git
state_dir: /run/gitroot/medium/gitroot/state
# where the boot loader reads the kernels and initrds of kept releases
boot_dir: {boot_dir}
bootloader:
  type: {loader}
  cmdline: "{cmdline}"
# the release keys (docs/signing.md); put the file there
trusted_keys:
  allowed_signers: /etc/gitroot/allowed_signers
signature_policy: strict
# where releases come from: set at least one
remotes: {remotes}
"""


@dataclass
class ImageSettings:
    root: str
    bootloader: str = "none"
    cmdline: str = "boot=gitroot gitroot.root=LABEL=gitroot gitroot.rootfstype=ext4 panic=10"
    boot_dir: Optional[str] = None
    remotes: Tuple[str, ...] = ()
    update_initramfs: bool = False
    check_packages: bool = True
    #: systemd-boot: the ESP, as /dev/... or LABEL=, UUID=, PARTUUID=, PARTLABEL=
    esp_device: str = "PARTLABEL=esp"
    #: systemd-boot: a directory to lay the ESP's own files out in
    esp_dir: Optional[str] = None


def data_dir() -> str:
    """Where the hook, boot script and units are: the source checkout this
    package runs from, or ``share/gitroot`` of a ``pip install``."""
    package = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.dirname(os.path.dirname(package)),
                  os.path.join(sys.prefix, "share", "gitroot"),
                  "/usr/local/share/gitroot", "/usr/share/gitroot"]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "hooks", "gitroot")) and \
                os.path.isfile(os.path.join(candidate, "initramfs", "gitroot")):
            return candidate
    raise GitrootError("cannot find gitroot's hook, boot script and units (run from a "
                       "source checkout, or pip install it with its data files)")


def missing_packages(root: str, bootloader: str = "none") -> List[str]:
    import glob
    wanted = RUNTIME_PACKAGES + (SYSTEMD_BOOT_PACKAGES if bootloader == "systemd-boot" else ())
    return [package for package, path in wanted
            if not glob.glob(os.path.join(root, path))]


def install_image(settings: ImageSettings) -> List[str]:
    """Install into ``settings.root``; returns what was done, one line each."""
    root = os.path.abspath(settings.root)
    if not os.path.isdir(os.path.join(root, "etc")) or \
            not os.path.isdir(os.path.join(root, "usr")):
        raise UsageError(f"{root} does not look like a root filesystem tree (no etc/, usr/)")
    if settings.esp_dir and settings.bootloader != "systemd-boot":
        raise UsageError("--esp lays out systemd-boot's ESP: it needs --bootloader systemd-boot")
    if settings.check_packages:
        missing = missing_packages(root, settings.bootloader)
        if missing:
            raise UsageError(f"{root} lacks packages gitroot needs: {' '.join(missing)} "
                             f"(apt-get install {' '.join(missing)} in the image)")
    # checked before anything is written: nothing half-installed
    esp_unit = _esp_mount_unit(settings) if settings.bootloader == "systemd-boot" else None
    data = data_dir()
    done = []
    done.append(_install_package(root))
    done.append(_install_command(root))
    done += _install_boot_path(root, data)
    done += _install_units(root, data)
    done.append(_install_config(root, settings))
    if esp_unit is not None:
        done.append(_install_esp_mount(root, *esp_unit))
        if settings.esp_dir:
            done.append(install_esp(root, settings.esp_dir))
    if settings.update_initramfs:
        done.append(_update_initramfs(root))
    return done


def _install_package(root: str) -> str:
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.path.join(root, PYTHON_DIR, "gitroot")
    if os.path.exists(target):
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not os.path.exists(os.path.join(root, "usr/bin/python3")):
        return f"installed the gitroot package into /{PYTHON_DIR}/gitroot (not compiled: " \
               "the image has no python3 yet)"
    # compiled by the image's own python3: the initramfs gets the .pyc files
    # and no boot spends time compiling
    _in_root(root, ["python3", "-m", "compileall", "-q", f"/{PYTHON_DIR}/gitroot"])
    return f"installed the gitroot package into /{PYTHON_DIR}/gitroot (compiled)"


def _install_command(root: str) -> str:
    path = os.path.join(root, "usr/bin/gitroot")
    with open(path, "w") as f:
        f.write("#!/usr/bin/python3\n"
                "# gitroot's command, installed by gitroot install-image\n"
                "import sys\n\n"
                "from gitroot.cli import main\n\n"
                "sys.exit(main())\n")
    os.chmod(path, 0o755)
    return "installed /usr/bin/gitroot"


def _install_boot_path(root: str, data: str) -> List[str]:
    hook = os.path.join(root, "usr/share/initramfs-tools/hooks/gitroot")
    script = os.path.join(root, "usr/share/initramfs-tools/scripts/gitroot")
    for source, target, mode in ((os.path.join(data, "hooks", "gitroot"), hook, 0o755),
                                 (os.path.join(data, "initramfs", "gitroot"), script, 0o644)):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
        os.chmod(target, mode)
    post_update = os.path.join(root, "etc/initramfs/post-update.d/gitroot")
    os.makedirs(os.path.dirname(post_update), exist_ok=True)
    shutil.copyfile(os.path.join(data, "hooks", "post-update"), post_update)
    os.chmod(post_update, 0o755)
    conf = os.path.join(root, "etc/initramfs-tools/conf.d/gitroot")
    os.makedirs(os.path.dirname(conf), exist_ok=True)
    with open(conf, "w") as f:
        f.write(INITRAMFS_CONF)
    return ["installed the initramfs hook and boot script, and initramfs-tools' settings "
            "(FSTYPE=ext4, an uncompressed and reproducible initrd)"]


def _install_units(root: str, data: str) -> List[str]:
    unit_dir = os.path.join(root, UNIT_DIR)
    os.makedirs(unit_dir, exist_ok=True)
    for unit in UNITS:
        shutil.copyfile(os.path.join(data, "systemd", unit), os.path.join(unit_dir, unit))
        os.chmod(os.path.join(unit_dir, unit), 0o644)
        wants = os.path.join(root, "etc/systemd/system", ENABLE[unit])
        os.makedirs(wants, exist_ok=True)
        link = os.path.join(wants, unit)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(f"/{UNIT_DIR}/{unit}", link)
    for mount in KEPT_MOUNTS:
        dropin = os.path.join(unit_dir, f"{mount}.d", "gitroot.conf")
        os.makedirs(os.path.dirname(dropin), exist_ok=True)
        with open(dropin, "w") as f:
            f.write(KEPT_MOUNT_DROPIN)
    return [f"installed and enabled {', '.join(UNITS)}",
            "kept the medium, lower, overlay and jail mounts out of systemd's shutdown unmounting"]


def _install_config(root: str, settings: ImageSettings) -> str:
    path = os.path.join(root, "etc/gitroot/gitroot.yml")
    if os.path.exists(path):
        return "kept the image's /etc/gitroot/gitroot.yml"
    boot_dir = _boot_dir(settings)
    import json
    text = DEFAULT_CONFIG.format(boot_dir=boot_dir, loader=settings.bootloader,
                                 cmdline=settings.cmdline.replace('"', '\\"'),
                                 remotes=json.dumps(list(settings.remotes)))
    from gitroot.device.config import parse_config
    parse_config(text, "the default configuration")     # never ship one that fails
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return "wrote /etc/gitroot/gitroot.yml"


def _boot_dir(settings: ImageSettings) -> str:
    return settings.boot_dir or ("/run/gitroot/medium/boot"
                                 if settings.bootloader != "systemd-boot" else "/boot/efi")


def esp_device_path(spec: str) -> str:
    """The device node a mount unit names for *spec* (fstab's ``LABEL=esp``
    or a ``/dev`` path): udev's link, so systemd waits for the device."""
    if spec.startswith("/dev/"):
        return spec
    kind, sep, value = spec.partition("=")
    if not sep or kind not in _DEVICE_LINKS or not value or \
            not all(c.isalnum() or c in "._-" for c in value):
        raise UsageError(f"ESP device {spec!r}: give /dev/NAME, or LABEL=, UUID=, PARTUUID= or "
                         "PARTLABEL= with letters, digits and . _ -")
    return f"/dev/disk/{_DEVICE_LINKS[kind]}/{value}"


def _esp_mount_unit(settings: ImageSettings) -> Tuple[str, str]:
    """(unit name, its text) of the ESP's mount unit at the boot directory."""
    where = _boot_dir(settings)
    parts = where.strip("/").split("/")
    if not where.startswith("/") or not all(p and all(c.isalnum() or c in "_." for c in p)
                                            for p in parts):
        raise UsageError(f"boot directory {where!r}: systemd-boot's ESP needs a plain absolute "
                         "path (letters, digits, _ . between slashes)")
    unit = "-".join(parts) + ".mount"        # systemd's name for the mount point
    what = esp_device_path(settings.esp_device)
    return unit, ESP_MOUNT_UNIT.format(what=what, where=where)


def _install_esp_mount(root: str, unit: str, text: str) -> str:
    with open(os.path.join(root, UNIT_DIR, unit), "w") as f:
        f.write(text)
    wants = os.path.join(root, "etc/systemd/system/local-fs.target.wants")
    os.makedirs(wants, exist_ok=True)
    link = os.path.join(wants, unit)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(f"/{UNIT_DIR}/{unit}", link)
    return f"installed and enabled {unit} (the EFI system partition)"


def install_esp(root: str, esp: str) -> str:
    """Lay out the ESP's own files in *esp* (see the module docstring)."""
    binary = os.path.join(root, SYSTEMD_BOOT_EFI)
    if not os.path.isfile(binary):
        raise UsageError(f"{root} has no /{SYSTEMD_BOOT_EFI} (apt-get install systemd-boot-efi "
                         "in the image)")
    for name in ESP_LOADER_PATHS:
        target = os.path.join(esp, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(binary, target)
    os.makedirs(os.path.join(esp, "loader", "entries"), exist_ok=True)
    with open(os.path.join(esp, "loader", "loader.conf"), "w") as f:
        f.write(LOADER_CONF)
    return (f"laid out the ESP in {esp}: systemd-boot as /{ESP_LOADER_PATHS[0]}, "
            "/loader/loader.conf")


def _update_initramfs(root: str) -> str:
    if root == "/":
        subprocess.run(["update-initramfs", "-u", "-k", "all"], check=True)
        return "updated the initramfs"
    versions = os.listdir(os.path.join(root, "lib/modules"))
    if not versions:
        raise UsageError(f"{root} has no kernel (/lib/modules is empty)")
    with chroot_mounts(root):
        for version in versions:
            exists = os.path.exists(os.path.join(root, "boot", f"initrd.img-{version}"))
            _in_root(root, ["update-initramfs", "-u" if exists else "-c", "-k", version])
    return f"made the initramfs for {', '.join(sorted(versions))}"


def _in_root(root: str, cmd: List[str]) -> None:
    full = cmd if root == "/" else ["chroot", root] + cmd
    proc = subprocess.run(full, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GitrootError(f"{' '.join(full)} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")


@contextmanager
def chroot_mounts(root: str) -> Iterator[None]:
    """/proc, /sys and /dev for commands run in *root*; always unmounted."""
    with ExitStack() as stack:
        for args, where in ((["-t", "proc", "proc"], "proc"),
                            (["-t", "sysfs", "sysfs"], "sys"),
                            (["--bind", "/dev"], "dev")):
            target = os.path.join(root, where)
            subprocess.run(["mount", *args, target], check=True)
            stack.callback(subprocess.run, ["umount", "-l", target], check=False)
        yield
