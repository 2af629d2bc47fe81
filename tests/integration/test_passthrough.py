"""The libfuse 3 back end's passthrough lever (a prototype, opt-in): real
mounts whose files the kernel reads from the verified blob cache.

Needs what the lever needs: root, Linux >= 6.9 and libfuse >= 3.17 loaded by
mfusepy (Debian 13: run through .ci/chroot-test); skipped elsewhere.
"""

import errno
import hashlib
import os
import platform
import stat

import pygit2
import pytest

from gitroot.git import objects as go
from tests import craft
from tests.conftest import fuse_available, gitroot_cmd
from tests.mounts import Mount, check_listing_types_and_inodes
from tests.sample_tree import compare, make_sample_tree, snapshot


def _libfuse_version():
    try:
        from gitroot.serve import libfuse3
    except ImportError:
        return None
    return libfuse3.LIBFUSE_VERSION


def _kernel() -> tuple:
    return tuple(int(p) for p in platform.release().split("-")[0].split(".")[:2])


pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not fuse_available(), reason="needs root, /dev/fuse and fusermount"),
    pytest.mark.skipif((_libfuse_version() or (0, 0)) < (3, 17),
                       reason="needs mfusepy on libfuse >= 3.17 (Debian 13)"),
    pytest.mark.skipif(_kernel() < (6, 9), reason="needs Linux >= 6.9 (FUSE passthrough)"),
]


@pytest.fixture(autouse=True)
def passthrough(monkeypatch, tmp_path):
    monkeypatch.setenv("GITROOT_FUSE", "libfuse3")
    monkeypatch.setenv("GITROOT_FUSE3_ON", "passthrough")
    monkeypatch.setenv("GITROOT_BLOB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def sample_commit(tmp_path_factory):
    base = tmp_path_factory.mktemp("passthrough")
    src = make_sample_tree(str(base / "src"))
    repo = str(base / "repo.git")
    commit = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main", "-m", "s").stdout.strip()
    return src, repo, commit


def _hashes_to_its_name(path) -> bool:
    data = open(path, "rb").read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == os.path.basename(path)


def test_round_trip_with_empty_then_filled_cache(sample_commit, passthrough, tmp_path):
    """First mount fills the cache as files are opened, the second is served
    from it; both byte-exact, and every cached file is its blob."""
    src, repo, commit = sample_commit
    expected = snapshot(src)
    log = str(tmp_path / "daemon.log")
    with Mount(repo, commit, tmp_path / "mnt", log_file=log) as m:
        assert compare(expected, snapshot(m.mountpoint)) == []
    assert "FUSE passthrough on" in open(log).read()
    cached = os.listdir(passthrough)
    files = [r for r in expected.values() if stat.S_ISREG(r[0])]
    assert 0 < len(cached) <= len(files)
    assert all(_hashes_to_its_name(passthrough / name) for name in cached)
    with Mount(repo, commit, tmp_path / "mnt") as m:
        assert compare(expected, snapshot(m.mountpoint)) == []
    assert sorted(os.listdir(passthrough)) == sorted(cached)


def test_directory_listing_gives_type_and_inode(sample_commit, tmp_path):
    src, repo, commit = sample_commit
    with Mount(repo, commit, tmp_path / "mnt") as m:
        assert check_listing_types_and_inodes(m.mountpoint) == len(snapshot(src)) - 1


def test_a_tampered_cache_file_is_never_served(passthrough, tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    good = craft.blob(repo, b"the real bytes\n")
    root = craft.with_manifest(repo, [(go.MODE_BLOB, b"f", good)],
                               craft.manifest(b"f\tf\t644\t0\t0\t1.000000000\t15"))
    commit = craft.commit(repo, root)
    with Mount(repo.path, commit, tmp_path / "mnt") as m:
        assert open(os.path.join(m.mountpoint, "f"), "rb").read() == b"the real bytes\n"
    cached = passthrough / good.hex()
    os.chmod(cached, 0o600)
    cached.write_bytes(b"FORGED BYTES!!\n")          # same size
    log = str(tmp_path / "daemon.log")
    with Mount(repo.path, commit, tmp_path / "mnt", log_file=log) as m:
        assert open(os.path.join(m.mountpoint, "f"), "rb").read() == b"the real bytes\n"
    assert "does not hash to its name" in open(log).read()
    assert _hashes_to_its_name(cached)                # refilled from the repository


def test_a_corrupt_blob_is_eio_and_never_cached(passthrough, tmp_path):
    repo, commit, good, _bad = craft.good_and_corrupt(str(tmp_path / "evil.git"))
    with Mount(repo.path, commit, tmp_path / "mnt") as m:
        assert open(os.path.join(m.mountpoint, "f"), "rb").read() == b"hello"
        with pytest.raises(OSError) as info:
            open(os.path.join(m.mountpoint, "g"), "rb").read()
        assert info.value.errno == errno.EIO
    assert os.listdir(passthrough) == [good.hex()]
