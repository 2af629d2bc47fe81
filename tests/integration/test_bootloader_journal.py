"""GRUB reads the medium without replaying its journal: once gitroot has
written the boot loader's files, the filesystem's home blocks must already
hold them (gitroot/device/bootloader/flush.py).

A real ext4 on a loop device, mounted with a long commit interval, read
back with debugfs, which like GRUB does not replay the journal.  A control
file written the ordinary way (fsync and rename) shows the check can fail:
debugfs does not see it yet.
"""

import os
import shutil
import subprocess

import pytest

from gitroot import atomic
from gitroot.device.bootloader import Entry, TrialCounter
from gitroot.device.bootloader.flush import filesystem_type, flush_for_loader
from gitroot.device.bootloader.grub import Grub, format_env, grub_cfg

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a loop device: needs root"),
    pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("debugfs")),
                       reason="needs e2fsprogs (mkfs.ext4, debugfs)"),
]

V1 = "1" * 40
V2 = "2" * 40


def _entries(*pairs):
    return [Entry(commit, role, f"gitroot/{commit}/vmlinuz", f"gitroot/{commit}/initrd.img",
                  f"boot=gitroot console=ttyS0 gitroot.commit={commit}")
            for role, commit in pairs]


@pytest.fixture
def medium(tmp_path):
    image = tmp_path / "medium.img"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    # commit=300: nothing reaches the journal's home blocks by the clock
    # while the test runs, only by what gitroot does
    subprocess.run(["mount", "-o", "loop,commit=300", str(image), str(mountpoint)], check=True)
    try:
        yield image, mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def home_view(image, path: str) -> bytes:
    """*path* as a reader that ignores the journal sees it (b"" if absent)."""
    out = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)],
                         capture_output=True, check=True)
    return out.stdout


def test_grub_files_are_home_before_write_returns(medium):
    image, mountpoint = medium
    boot = mountpoint / "boot"
    assert filesystem_type(str(mountpoint)) == "ext4"
    grub = Grub(str(boot))

    grub.write(_entries(("last-good", V1)), None)
    assert flush_for_loader(str(boot)) == "froze"
    assert home_view(image, "/boot/grub/grub.cfg") == (boot / "grub/grub.cfg").read_bytes()

    # the control: an fsynced, renamed file is in the journal, not home
    atomic.write_file(str(boot / "probe"), b"written the ordinary way\n")
    assert home_view(image, "/boot/probe") == b""

    trial = TrialCounter(V2, 3)
    entries = _entries(("trial", V2), ("last-good", V1))
    grub.write(entries, trial)
    # grub.cfg is flushed inside write(), before grubenv names the trial
    assert home_view(image, "/boot/grub/grub.cfg") == grub_cfg(entries, trial).encode()
    flush_for_loader(str(boot))
    assert home_view(image, "/boot/grub/grubenv") == format_env(
        {"gitroot_trial": V2, "gitroot_tries": "3"})
    assert home_view(image, "/boot/probe") == b"written the ordinary way\n"


def test_the_running_systems_root_is_never_frozen():
    assert flush_for_loader("/") == "synced"
