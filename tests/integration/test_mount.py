"""Real FUSE mounts of real commits, through the gitroot CLI."""

import errno
import os
import re

import signal
import stat
import subprocess
import sys
import time

import pygit2
import pytest

from gitroot.git import objects as go
from tests import craft
from tests.conftest import REPO_ROOT, fuse_available, gitroot_cmd
from tests.rootfs import debian_minbase
from tests.mounts import Mount, check_listing_types_and_inodes, is_mounted, wait_gone
from tests.sample_tree import compare, make_sample_tree, snapshot

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not fuse_available(), reason="needs root, /dev/fuse and fusermount"),
]


@pytest.fixture(autouse=True)
def every_backend(fuse_backend):
    """Every test here runs through each FUSE back end the mount can pick."""
    return fuse_backend




@pytest.fixture(scope="module")
def sample_commit(tmp_path_factory):
    base = tmp_path_factory.mktemp("roundtrip")
    src = make_sample_tree(str(base / "src"))
    repo = str(base / "repo.git")
    commit = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main", "-m", "s").stdout.strip()
    return src, repo, commit


def test_round_trip_of_sample_tree(sample_commit, tmp_path):
    src, repo, commit = sample_commit
    expected = snapshot(src)
    assert any(r[4] and r[4] > 50 * 2**20 for r in expected.values()), "needs a 50 MB file"
    with Mount(repo, commit, tmp_path / "mnt") as m:
        actual = snapshot(m.mountpoint)
    assert compare(expected, actual) == []


def test_a_tree_read_in_order_is_read_ahead_through_the_mount(sample_commit, tmp_path,
                                                              monkeypatch):
    """tar reads the tree in listing order: the daemon's worker threads load
    the blobs before tar asks (gitroot.serve.readahead), and every byte
    still arrives as committed."""
    src, repo, commit = sample_commit
    log = str(tmp_path / "daemon.log")
    with Mount(repo, commit, tmp_path / "mnt", log_file=log) as m:
        archive = subprocess.run(f"tar -C {m.mountpoint} -cf - . | sha256sum", shell=True,
                                 capture_output=True, text=True, check=True).stdout
    with open(log) as f:
        text = f.read()
    served = re.search(r"read-ahead across files: (\d+) blobs served", text)
    files = sum(1 for r in snapshot(src).values() if r[0] == stat.S_IFREG)
    assert served and int(served.group(1)) > files // 2, text
    monkeypatch.setenv("GITROOT_READAHEAD", "off")
    with Mount(repo, commit, tmp_path / "mnt") as m:
        again = subprocess.run(f"tar -C {m.mountpoint} -cf - . | sha256sum", shell=True,
                               capture_output=True, text=True, check=True).stdout
    assert again == archive


def test_comparer_sees_a_changed_source(sample_commit, tmp_path):
    """The round-trip check can fail: a source changed after the commit differs."""
    src, repo, commit = sample_commit
    with Mount(repo, commit, tmp_path / "mnt") as m:
        actual = snapshot(m.mountpoint)
    expected = snapshot(src)
    path = b"etc/hostname"
    changed = dict(expected)
    changed[path] = expected[path][:5] + (expected[path][5] + 1,) + expected[path][6:]
    assert compare(changed, actual) == [f"{path!r}: mtime_ns {changed[path][5]} != "
                                        f"{expected[path][5]}"]


def test_mount_by_branch_tag_and_id(sample_commit, tmp_path):
    src, repo, commit = sample_commit
    r = pygit2.Repository(repo)
    r.create_reference_direct("refs/tags/v1", pygit2.Oid(hex=commit), True)
    for rev in ("main", "v1", commit, commit[:10]):
        with Mount(repo, rev, tmp_path / "mnt") as m:
            with open(os.path.join(m.mountpoint, "etc/hostname")) as f:
                assert f.read() == "gitroot-sample\n"


def test_read_only(sample_commit, tmp_path):
    _, repo, commit = sample_commit
    with Mount(repo, commit, tmp_path / "mnt") as m:
        mp = m.mountpoint
        for action in (lambda: open(os.path.join(mp, "etc/hostname"), "w"),
                       lambda: open(os.path.join(mp, "new"), "w"),
                       lambda: os.mkdir(os.path.join(mp, "d")),
                       lambda: os.unlink(os.path.join(mp, "etc/hostname")),
                       lambda: os.chmod(os.path.join(mp, "etc/hostname"), 0o600),
                       lambda: os.setxattr(os.path.join(mp, "etc/hostname"), "user.x", b"1")):
            with pytest.raises(OSError) as info:
                action()
            assert info.value.errno == errno.EROFS


def test_unmount_on_sigterm(sample_commit, tmp_path):
    _, repo, commit = sample_commit
    m = Mount(repo, commit, tmp_path / "mnt")
    assert is_mounted(m.mountpoint)
    os.kill(m.pid, signal.SIGTERM)
    wait_gone(m.pid)
    assert not is_mounted(m.mountpoint)


def test_unmount_with_fusermount(sample_commit, tmp_path):
    _, repo, commit = sample_commit
    m = Mount(repo, commit, tmp_path / "mnt")
    subprocess.run(["fusermount", "-u", m.mountpoint], check=True)
    wait_gone(m.pid)
    assert not is_mounted(m.mountpoint)


def test_foreground_mount(sample_commit, tmp_path):
    _, repo, commit = sample_commit
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "gitroot", "mount", "--repo", repo,
                             commit, str(mp), "--foreground"], env=env)
    try:
        deadline = time.monotonic() + 20
        while not is_mounted(str(mp)):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        assert os.path.exists(mp / "etc" / "hostname")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    assert not is_mounted(str(mp))


@pytest.mark.parametrize("args,code,message", [
    (["--repo", "{tmp}/missing.git", "main", "{mnt}"], 3, "no such repository"),
    (["--repo", "{repo}", "no-such-branch", "{mnt}"], 3, "unknown revision 'no-such-branch'"),
    (["--repo", "{repo}", "main", "{tmp}/not-a-dir"], 6, "not a directory"),
])
def test_mount_errors_are_one_clear_line(sample_commit, tmp_path, args, code, message):
    _, repo, _ = sample_commit
    (tmp_path / "mnt").mkdir()
    args = [a.format(tmp=tmp_path, repo=repo, mnt=tmp_path / "mnt") for a in args]
    proc = gitroot_cmd("mount", *args, check=False)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not is_mounted(str(tmp_path / "mnt"))


def test_mount_on_busy_mountpoint_reports_libfuse_error(sample_commit, tmp_path, fuse_backend):
    if fuse_backend in ("libfuse3", "lowlevel"):
        pytest.skip("libfuse 3 dropped libfuse 2's non-empty mount point check: "
                    "the mount stacks (see test_libfuse_failure_is_one_clear_line)")
    _, repo, commit = sample_commit
    with Mount(repo, commit, tmp_path / "mnt") as m:
        proc = gitroot_cmd("mount", "--repo", repo, commit,
                           os.path.join(m.mountpoint, "etc"), check=False)
        assert proc.returncode != 0
        assert "error" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_libfuse_failure_is_one_clear_line(sample_commit, tmp_path):
    """What libfuse itself refuses reaches the user as one line: here
    /dev/fuse is /dev/null in a private mount namespace, so mount(2) fails."""
    _, repo, commit = sample_commit
    (tmp_path / "mnt").mkdir()
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    # Only /dev is made private, not /: in a chroot (.ci/chroot-test) / is
    # no mount point and unshare's default "--propagation private" fails.
    script = ('mount --make-rprivate /dev && mount --bind /dev/null /dev/fuse && '
              'exec "$0" -m gitroot mount --repo "$1" "$2" "$3"')
    proc = subprocess.run(["unshare", "-m", "--propagation", "unchanged", "sh", "-c", script,
                           sys.executable, repo, commit, str(tmp_path / "mnt")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 6, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "fuse: mount failed: Invalid argument" in lines[0], proc.stderr


def test_corrupt_blob_is_eio_through_the_mount_with_a_log_line(tmp_path):
    repo, commit, _good, bad = craft.good_and_corrupt(str(tmp_path / "evil.git"))
    log = str(tmp_path / "daemon.log")
    with Mount(repo.path, commit, tmp_path / "mnt", log_file=log) as m:
        with open(os.path.join(m.mountpoint, "f"), "rb") as f:
            assert f.read() == b"hello"
        with pytest.raises(OSError) as info:
            with open(os.path.join(m.mountpoint, "g"), "rb") as f:
                f.read()
        assert info.value.errno == errno.EIO
    with open(log) as f:
        text = f.read()
    assert "/g:" in text and bad.hex() in text


def test_hostile_names_never_escape_through_the_mount(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "evil.git"), bare=True)
    secret = craft.blob(repo, b"secret")
    items = [(go.MODE_BLOB, n, secret) for n in (b"..", b"a/b", b".git")]
    items.append((go.MODE_BLOB, b"ok", secret))
    root = craft.with_manifest(repo, items, craft.manifest(b"ok\tf\t644\t0\t0\t1.000000000\t6"))
    commit = craft.commit(repo, root)
    with Mount(repo.path, commit, tmp_path / "mnt") as m:
        assert sorted(os.listdir(m.mountpoint)) == ["ok"]
        assert not os.path.exists(os.path.join(m.mountpoint, ".git"))


def test_one_hostile_manifest_line_costs_only_its_entry(tmp_path):
    """A device number beyond Linux's range and a 4,100-byte name used to
    make the root directory answer EIO or be unlistable."""
    repo = pygit2.init_repository(str(tmp_path / "evil.git"), bare=True)
    good = craft.blob(repo, b"hello")
    long_name = b"n" * 4100
    root = craft.with_manifest(
        repo, [(go.MODE_BLOB, b"f", good), (go.MODE_BLOB, long_name, good)],
        craft.manifest(b"evil\tc\t600\t0\t0\t1.000000000\t-\trdev=2147483648:0",
                       b"f\tf\t644\t0\t0\t1.000000000\t5",
                       long_name + b"\tf\t644\t0\t0\t1.000000000\t5"))
    commit = craft.commit(repo, root)
    with Mount(repo.path, commit, tmp_path / "mnt") as m:
        assert sorted(os.listdir(m.mountpoint)) == ["evil", "f"]
        with pytest.raises(OSError) as info:
            os.stat(os.path.join(m.mountpoint, "evil"))
        assert info.value.errno == errno.EIO
        with open(os.path.join(m.mountpoint, "f"), "rb") as f:
            assert f.read() == b"hello"


@pytest.mark.slow
def test_round_trip_of_debian_minbase(tmp_path):
    """A real `debootstrap --variant=minbase` root of this machine's release,
    committed and mounted."""
    # A private copy: the shared cache may have hard links from outside
    # (a benchmark's `cp -al`), and link counts must be the tree's own.
    src = str(tmp_path / "rootfs")
    subprocess.run(["cp", "-a", debian_minbase(), src], check=True)
    repo = str(tmp_path / "debian.git")
    started = time.monotonic()
    commit = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main").stdout.strip()
    first = time.monotonic() - started
    expected = snapshot(src)
    with Mount(repo, commit, tmp_path / "mnt") as m:
        actual = snapshot(m.mountpoint)
        st = os.stat(os.path.join(m.mountpoint, "usr/bin/su"))
        assert st.st_mode & stat.S_ISUID
    assert len(expected) > 5000
    assert compare(expected, actual) == []
    # A second commit of the unchanged tree reads no file again.
    started = time.monotonic()
    proc = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main")
    second = time.monotonic() - started
    assert "(0 read" in proc.stderr, proc.stderr
    print(f"first commit {first:.1f} s, second {second:.1f} s")


def test_unreadable_directory_is_eio_through_the_mount(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "evil.git"), bare=True)
    good = craft.blob(repo, b"hello")
    sub = craft.tree(repo, [(go.MODE_BLOB, b"inner", good)])
    root = craft.with_manifest(repo, [(go.MODE_TREE, b"d", sub), (go.MODE_BLOB, b"f", good)],
                               craft.manifest(b"d\td\t755\t0\t0\t1.000000000\t-",
                                              b"d/inner\tf\t644\t0\t0\t1.000000000\t5",
                                              b"f\tf\t644\t0\t0\t1.000000000\t5"))
    commit = craft.commit(repo, root)
    craft.corrupt_loose_object(repo, sub, b"garbage", type_name=b"tree")
    with Mount(repo.path, commit, tmp_path / "mnt") as m:
        with pytest.raises(OSError) as info:
            os.listdir(os.path.join(m.mountpoint, "d"))
        assert info.value.errno == errno.EIO
        with open(os.path.join(m.mountpoint, "f"), "rb") as f:
            assert f.read() == b"hello"


def test_directory_listing_gives_type_and_inode(sample_commit, tmp_path):
    """readdir passes d_type and d_ino: they must agree with lstat (under
    each back end, see every_backend)."""
    src, repo, commit = sample_commit
    with Mount(repo, commit, tmp_path / "mnt") as m:
        assert check_listing_types_and_inodes(m.mountpoint) == len(snapshot(src)) - 1
        assert sorted(os.listdir(os.path.join(m.mountpoint, "dev"))) == ["null", "sda"]


def test_statfs_counts_the_commit(sample_commit, tmp_path):
    src, repo, commit = sample_commit
    expected = snapshot(src)
    total = sum(r[4] or 0 for r in expected.values() if stat.S_ISREG(r[0]) or stat.S_ISLNK(r[0]))
    with Mount(repo, commit, tmp_path / "mnt") as m:
        for _ in range(2):          # the second answer comes from the cache
            st = os.statvfs(m.mountpoint)
            assert st.f_files == len(expected)
            assert st.f_blocks * st.f_frsize >= total > (st.f_blocks - 1) * st.f_frsize
            assert st.f_namemax == 255
