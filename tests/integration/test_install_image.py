"""gitroot install-image into a root tree made in tmp_path (no chroot: the
tree has no python3, so nothing is compiled and no initramfs is made; the
QEMU tests in tests/system run the whole thing on a Debian root)."""

import os
import subprocess

import pytest

from gitroot.device.config import load_config
from tests.conftest import gitroot_cmd


@pytest.fixture
def root(tmp_path):
    tree = tmp_path / "root"
    for path in ("etc", "usr/bin", "usr/lib"):
        (tree / path).mkdir(parents=True)
    return tree


def test_installs_everything_a_device_needs(root):
    out = gitroot_cmd("install-image", root, "--no-package-check", "--bootloader", "grub",
                      "--cmdline", "boot=gitroot gitroot.root=LABEL=gitroot panic=10",
                      "--remote", "https://updates.example.com/os.git").stdout
    assert "not compiled" in out
    command = root / "usr/bin/gitroot"
    assert os.access(command, os.X_OK)
    assert command.read_text().startswith("#!/usr/bin/python3\n")
    assert (root / "usr/lib/python3/dist-packages/gitroot/cli/__init__.py").is_file()
    assert not list((root / "usr/lib/python3/dist-packages/gitroot").rglob("__pycache__"))
    hook = root / "usr/share/initramfs-tools/hooks/gitroot"
    assert os.stat(hook).st_mode & 0o777 == 0o755
    assert (root / "usr/share/initramfs-tools/scripts/gitroot").is_file()
    conf = (root / "etc/initramfs-tools/conf.d/gitroot").read_text()
    for line in ("FSTYPE=ext4", "COMPRESS=gzip", 'SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1}"'):
        assert line in conf.splitlines()
    post_update = root / "etc/initramfs/post-update.d/gitroot"
    assert os.stat(post_update).st_mode & 0o777 == 0o755
    assert "gitroot uncompress-initrd" in post_update.read_text()
    for unit, target in (("gitroot-fetch.service", "multi-user.target"),
                         ("gitroot-mark-good.service", "multi-user.target"),
                         ("gitroot-fetch.timer", "timers.target"),
                         ("gitroot-migrate.service", "sysinit.target")):
        assert (root / "usr/lib/systemd/system" / unit).is_file()
        link = root / "etc/systemd/system" / f"{target}.wants" / unit
        assert os.readlink(link) == f"/usr/lib/systemd/system/{unit}"
    assert "DefaultDependencies=no" in (
        root / "usr/lib/systemd/system/run-gitroot-medium.mount.d/gitroot.conf").read_text()
    config = load_config(str(root / "etc/gitroot/gitroot.yml"))
    assert config.repository == "/run/gitroot/medium/gitroot/repo.git"
    assert config.boot_dir == "/run/gitroot/medium/boot"
    assert config.bootloader.type == "grub"
    assert config.bootloader.cmdline == "boot=gitroot gitroot.root=LABEL=gitroot panic=10"
    assert config.trusted_keys.allowed_signers == "/etc/gitroot/allowed_signers"
    assert config.remotes == ("https://updates.example.com/os.git",)
    config.require_fetchable()          # a signed fetch has what it needs


def test_keeps_the_image_s_own_config(root):
    (root / "etc/gitroot").mkdir()
    (root / "etc/gitroot/gitroot.yml").write_text("branch: stable\n")
    out = gitroot_cmd("install-image", root, "--no-package-check").stdout
    assert "kept the image's /etc/gitroot/gitroot.yml" in out
    assert (root / "etc/gitroot/gitroot.yml").read_text() == "branch: stable\n"


def test_names_the_missing_packages(root):
    proc = gitroot_cmd("install-image", root, check=False)
    assert proc.returncode == 2
    assert "git" in proc.stderr.split() and "python3-pygit2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (root / "usr/bin/gitroot").exists()      # nothing half-installed


def test_refuses_what_is_not_a_root_tree(tmp_path):
    proc = gitroot_cmd("install-image", tmp_path, "--no-package-check", check=False)
    assert proc.returncode == 2 and "does not look like a root filesystem" in proc.stderr


def test_the_installed_command_runs(root):
    """/usr/bin/gitroot, run with this interpreter against the installed package."""
    gitroot_cmd("install-image", root, "--no-package-check")
    env = dict(os.environ, PYTHONPATH=str(root / "usr/lib/python3/dist-packages"))
    import sys
    proc = subprocess.run([sys.executable, str(root / "usr/bin/gitroot"), "--help"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "install-image" in proc.stdout


def test_systemd_boot_mounts_the_esp_and_lays_out_its_loader(root, tmp_path):
    """--bootloader systemd-boot: a mount unit for the ESP at /boot/efi, and
    --esp DIR: the image's own systemd-boot as the removable-media loader
    and loader.conf (the tree here has a stand-in for the EFI binary only:
    install-image copies it and never runs it)."""
    binary = root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"MZ systemd-boot")
    esp = tmp_path / "esp"
    out = gitroot_cmd("install-image", root, "--no-package-check", "--bootloader",
                      "systemd-boot", "--esp-device", "PARTLABEL=esp", "--esp", esp).stdout
    assert "boot-efi.mount" in out
    unit = (root / "usr/lib/systemd/system/boot-efi.mount").read_text()
    assert "What=/dev/disk/by-partlabel/esp\n" in unit
    assert "Where=/boot/efi\n" in unit and "Type=vfat\n" in unit
    assert os.readlink(root / "etc/systemd/system/local-fs.target.wants/boot-efi.mount") == \
        "/usr/lib/systemd/system/boot-efi.mount"
    for path in ("EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"):
        assert (esp / path).read_bytes() == b"MZ systemd-boot"
    assert "timeout 0" in (esp / "loader/loader.conf").read_text()
    assert (esp / "loader/entries").is_dir()
    config = load_config(str(root / "etc/gitroot/gitroot.yml"))
    assert config.boot_dir == "/boot/efi" and config.bootloader.type == "systemd-boot"


@pytest.mark.parametrize("args, message", [
    (["--bootloader", "systemd-boot", "--esp-device", "LABEL=a b"], "ESP device"),
    (["--bootloader", "systemd-boot", "--esp-device", "SERIAL=1"], "ESP device"),
    (["--bootloader", "systemd-boot", "--boot-dir", "/boot/my efi"], "plain absolute path"),
    (["--bootloader", "grub", "--esp", "/tmp/x"], "needs --bootloader systemd-boot"),
])
def test_refuses_a_bad_esp_setting(root, args, message):
    proc = gitroot_cmd("install-image", root, "--no-package-check", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (root / "usr/bin/gitroot").exists()      # nothing half-installed


def test_systemd_boot_names_its_packages(root):
    proc = gitroot_cmd("install-image", root, "--bootloader", "systemd-boot", check=False)
    assert proc.returncode == 2
    assert "systemd-boot-efi" in proc.stderr.split() and "systemd-boot" in proc.stderr.split()
