"""The boot-time daemon outside QEMU: ``gitroot mount --jail DIR --suid``.

run-init deletes the initramfs and moves /run away from under the FUSE
daemon.  Here the same loss is staged on the host: once the mount is ready,
the repository's directory is renamed, so its old absolute path no longer
exists for anyone outside the jail.  The objects are loose, so libgit2 opens
a file by absolute path for every blob read afterwards.  A jailed daemon
still serves every file; an unjailed one (the control) cannot.
"""

import json
import os
import subprocess

import pytest

from tests.conftest import fuse_available, gitroot_cmd
from tests.sample_tree import compare, make_sample_tree, snapshot
from tests.mounts import is_mounted, wait_gone

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not fuse_available(), reason="needs root, /dev/fuse and fusermount"),
]


@pytest.fixture()
def loose_repo(tmp_path):
    """A commit of the sample tree whose objects are all loose files."""
    src = make_sample_tree(str(tmp_path / "src"), big_file=False)
    medium = tmp_path / "medium"
    repo = medium / "gitroot" / "repo.git"
    commit = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main",
                         "-m", "s").stdout.strip()
    # unpack-objects skips objects the repository has, so the packs go first
    pack_dir = repo / "objects" / "pack"
    packs = tmp_path / "packs"
    packs.mkdir()
    for pack in list(pack_dir.iterdir()):
        pack.rename(packs / pack.name)
    for pack in packs.glob("*.pack"):
        with open(pack, "rb") as stream:
            subprocess.run(["git", "--git-dir", str(repo), "unpack-objects", "-q"],
                           stdin=stream, check=True)
    return src, medium, repo, commit


def _mount(repo, commit, mountpoint, *extra):
    os.makedirs(mountpoint, exist_ok=True)
    pid_file = str(mountpoint) + ".pid"
    gitroot_cmd("mount", "--repo", repo, commit, mountpoint, "--pid-file", pid_file, *extra)
    with open(pid_file) as f:
        return int(f.read())


def _mount_options(mountpoint):
    path = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return set(fields[5].split(","))
    raise AssertionError(f"{path} is not mounted")


def test_jailed_daemon_serves_after_its_repository_path_is_gone(loose_repo, tmp_path,
                                                               fuse_backend, monkeypatch):
    src, medium, repo, commit = loose_repo
    monkeypatch.setenv("GITROOT_RUN_DIR", str(tmp_path / "run"))
    jail = tmp_path / "run" / "jail"
    mnt = tmp_path / "mnt"
    # the boot path logs to /dev/kmsg, which refuses the seek of an append open
    log_file = "/dev/kmsg" if os.access("/dev/kmsg", os.W_OK) else tmp_path / "daemon.log"
    pid = _mount(repo, commit, mnt, "--jail", jail, "--suid", "--log-file", log_file)
    bound = str(jail) + os.path.realpath(repo)
    try:
        # chrooted into the jail, marked for systemd, repository bound read-only
        assert os.readlink(f"/proc/{pid}/root") == os.path.realpath(jail)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert f.read().startswith(b"@")
        assert is_mounted(bound)
        assert "ro" in _mount_options(bound)
        # the boot path records what serves the root, for gitroot status
        with open(tmp_path / "run" / "mount.json") as f:
            record = json.load(f)
        assert (record["backend"], record["pid"], record["commit"]) == (fuse_backend, pid,
                                                                       commit)
        assert os.path.exists(record["library"])
        # setuid bits and device files take effect on a system root
        options = _mount_options(mnt)
        assert "nosuid" not in options and "nodev" not in options
        # what run-init does to the daemon's world, staged: the old path is gone
        os.rename(medium, tmp_path / "medium-moved")
        assert not os.path.exists(repo)
        assert compare(snapshot(src), snapshot(str(mnt))) == []
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount", "-u", str(mnt)], check=True)
        wait_gone(pid)
        if is_mounted(bound):
            subprocess.run(["umount", bound], check=True)


def test_unjailed_daemon_loses_its_repository(loose_repo, tmp_path):
    """The control: without --jail the same rename breaks reads of new files."""
    src, medium, repo, commit = loose_repo
    mnt = tmp_path / "mnt"
    pid = _mount(repo, commit, mnt)
    try:
        options = _mount_options(mnt)
        assert "nosuid" in options and "nodev" in options
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert not f.read().startswith(b"@")
        os.rename(medium, tmp_path / "medium-moved")
        with pytest.raises(OSError):
            with open(mnt / "etc" / "hostname", "rb") as f:
                f.read()
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount", "-u", str(mnt)], check=True)
        wait_gone(pid)
