"""A release keeps its initrd uncompressed; gitroot installs it compressed
for the boot loader (gitroot.device.initrd, docs/boot.md).

Real parts: the initrds are made by the ``cpio`` program (``-H newc``, as
mkinitramfs does) from a small tree, the releases are gitroot commits, the
boot files are installed by ``gitroot pin`` and ``mark-good`` with a GRUB
configuration (what the first medium's recipe runs), and the installed
initrd is unpacked again by ``gzip``/``zstd`` and ``cpio`` themselves.
"""

import gzip
import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import gitroot_cmd

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None,
                                reason="cpio is not installed (apt-get install cpio)")


def make_cpio(tree) -> bytes:
    names = subprocess.run("find . | LC_ALL=C sort", shell=True, cwd=tree, check=True,
                           capture_output=True).stdout
    return subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"],
                          input=names, cwd=tree, check=True, capture_output=True).stdout


@pytest.fixture
def initramfs_tree(tmp_path):
    tree = tmp_path / "initramfs"
    (tree / "scripts").mkdir(parents=True)
    (tree / "init").write_text("#!/bin/sh\nexec /scripts/gitroot\n" * 200)
    (tree / "scripts" / "gitroot").write_text("echo gitroot boot script\n" * 500)
    (tree / "lib").mkdir()
    (tree / "lib" / "module.ko").write_bytes(bytes(range(256)) * 4000)
    return tree


def commit_release(tmp_path, repo, n: int, initrd: bytes) -> str:
    src = tmp_path / f"src{n}"
    (src / "boot").mkdir(parents=True)
    (src / "boot" / "vmlinuz-6.1.0-1-amd64").write_bytes(b"kernel %d" % n)
    (src / "boot" / "initrd.img-6.1.0-1-amd64").write_bytes(initrd)
    return gitroot_cmd("commit", src, "--repo", repo, "--branch", "main",
                       "-m", f"r{n}").stdout.strip()


def device_config(tmp_path, repo) -> str:
    config = tmp_path / "staging.yml"
    config.write_text(json.dumps({
        "repository": repo, "state_dir": str(tmp_path / "medium" / "state"),
        "boot_dir": str(tmp_path / "medium" / "boot"),
        "bootloader": {"type": "grub", "cmdline": "boot=gitroot"},
        "signature_policy": "none"}))
    return str(config)


def device(config, *args, tmp_path):
    env = dict(os.environ, GITROOT_RUN_DIR=str(tmp_path / "run"), GITROOT_CMDLINE="")
    return gitroot_cmd(*args, "--config", config, env=env)


def unpack(stream: bytes) -> bytes:
    """The installed initrd through the real decompressor its magic names."""
    tool = ["zstd", "-q", "-d", "-c"] if stream[:4] == b"\x28\xb5\x2f\xfd" else \
        ["gzip", "-d", "-c"]
    assert stream[:2] == b"\x1f\x8b" or stream[:4] == b"\x28\xb5\x2f\xfd", stream[:8]
    return subprocess.run(tool, input=stream, check=True, capture_output=True).stdout


def test_an_uncompressed_initrd_is_installed_compressed_and_an_old_one_as_is(
        tmp_path, initramfs_tree):
    repo = str(tmp_path / "repo.git")
    plain = make_cpio(initramfs_tree)
    old_style = gzip.compress(plain, mtime=0)           # what an older release carries
    r1 = commit_release(tmp_path, repo, 1, old_style)
    r2 = commit_release(tmp_path, repo, 2, plain)
    config = device_config(tmp_path, repo)
    device(config, "pin", r1, "--tries", "1", tmp_path=tmp_path)
    device(config, "mark-good", "--booted", r1, tmp_path=tmp_path)
    device(config, "pin", r2, "--tries", "2", tmp_path=tmp_path)
    boot = tmp_path / "medium" / "boot" / "gitroot"

    # the old release's compressed initrd, byte for byte
    assert (boot / r1 / "initrd.img").read_bytes() == old_style
    # the new one compressed, and the same cpio inside
    installed = (boot / r2 / "initrd.img").read_bytes()
    assert len(installed) < len(plain) // 2
    assert unpack(installed) == plain
    listing = subprocess.run(["cpio", "--quiet", "-t"], input=unpack(installed),
                             check=True, capture_output=True).stdout.decode().split()
    assert {"init", "scripts/gitroot", "lib/module.ko"} <= set(listing)
    # GRUB boots it from there
    cfg = (tmp_path / "medium" / "boot" / "grub" / "grub.cfg").read_text()
    assert f"initrd ${{gitroot_boot}}/gitroot/{r2}/initrd.img" in cfg
    assert not [p for p in boot.rglob("*") if ".tmp." in p.name]     # written atomically


def test_uncompress_initrd_keeps_an_image_s_initrd_uncompressed(tmp_path, initramfs_tree):
    """What /etc/initramfs/post-update.d/gitroot does after mkinitramfs."""
    plain = make_cpio(initramfs_tree)
    path = tmp_path / "initrd.img-6.1.0-1-amd64"
    path.write_bytes(gzip.compress(plain))
    out = subprocess.run(["sh", os.path.join(os.path.dirname(__file__), "..", "..",
                                             "hooks", "post-update"), "6.1.0-1-amd64",
                          str(path)], capture_output=True, text=True,
                         env=dict(os.environ, PATH=_gitroot_on_path(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert path.read_bytes() == plain
    proc = gitroot_cmd("uncompress-initrd", tmp_path / "missing", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def _gitroot_on_path(tmp_path) -> str:
    """PATH with a ``gitroot`` command that runs this checkout."""
    import sys
    from tests.conftest import REPO_ROOT
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gitroot").write_text(
        f"#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} -m gitroot \"$@\"\n")
    (bindir / "gitroot").chmod(0o755)
    return f"{bindir}{os.pathsep}{os.environ['PATH']}"


def test_an_oversized_initrd_gets_no_entry_and_nothing_else_changes(
        tmp_path, initramfs_tree, monkeypatch, caplog):
    """A hostile release's initrd is not read past the bound: with a boot
    loader the release gets no entry (the others keep theirs); without one
    (bootloader.type: none) installing it stops before anything is written."""
    import pygit2
    from gitroot.boot.state import State
    from gitroot.device import bootfiles, initrd
    from gitroot.device.bootloader import install_release, sync_boot_loader
    repo_path = str(tmp_path / "repo.git")
    plain = make_cpio(initramfs_tree)
    good = commit_release(tmp_path, repo_path, 1, plain)
    hostile = commit_release(tmp_path, repo_path, 2, plain + b"\0" * 4096)
    repo = pygit2.Repository(repo_path)
    monkeypatch.setattr(bootfiles, "MAX_INITRD", len(plain) + 100)
    boot = tmp_path / "boot"
    status = sync_boot_loader(repo, State(last_good=good, trial=None), good, "grub",
                              str(boot), "boot=gitroot")
    assert status.entries == {"last-good": good}
    assert not install_release(repo, hostile, str(boot))
    assert "more than the" in caplog.text
    assert not (boot / "gitroot" / hostile).exists()
    with pytest.raises(initrd.InitrdError, match="more than the"):
        bootfiles.install_boot_files(repo, hostile, str(tmp_path / "plain-boot"), keep=[])
    assert not (tmp_path / "plain-boot").exists()
