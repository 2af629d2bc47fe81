"""A release's /etc read from the repository (gitroot.serve.export) is the
copy through the mount, entry for entry: owners, modes, xattrs, symlinks,
hardlinks, devices, names that are not UTF-8, files read in several chunks
and streamed ones, mtimes to the nanosecond.

The first boot of a release builds the device's /etc this way
(``gitroot boot-persist --repo``); these tests compare it with what
:func:`gitroot.boot.etcmerge.copy_tree` makes of the same commit mounted
through each FUSE back end.
"""

import os
import stat

import pygit2
import pytest

from gitroot.boot import etcmerge
from gitroot.boot.persist import Layout, prepare_boot
from gitroot.git import objects as go
from gitroot.serve import export, vfs
from tests import craft
from tests.conftest import REPO_ROOT, fuse_available, gitroot_cmd
from tests.mounts import Mount
from tests.sample_tree import compare, make_sample_tree, snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="owners, devices and trusted xattrs need root")

A = "a" * 40


def odd_etc(etc: str) -> None:
    """More of what an /etc may hold, beside the sample tree's own."""
    j = lambda *p: os.path.join(etc, *p)  # noqa: E731
    os.makedirs(j("ssl/private"))
    os.chmod(j("ssl/private"), 0o710)
    os.chown(j("ssl/private"), 0, 108)
    os.makedirs(j("empty.d"))
    os.chmod(j("empty.d"), 0o700)
    with open(j("sudoers"), "w") as f:
        f.write("root ALL=(ALL) ALL\n")
    os.chmod(j("sudoers"), 0o440)
    with open(j("ssl/private/key.pem"), "w") as f:
        f.write("not really a key\n")
    os.chown(j("ssl/private/key.pem"), 0, 108)
    os.chmod(j("ssl/private/key.pem"), 0o640)
    with open(j("setuid-tool"), "wb") as f:
        f.write(b"\x7fELF not really\n")
    os.chown(j("setuid-tool"), 0, 4)
    os.chmod(j("setuid-tool"), 0o6751)
    os.setxattr(j("setuid-tool"), "security.capability", bytes.fromhex(
        "0100000200200000000000000000000000000000"))
    os.setxattr(j("setuid-tool"), "trusted.gitroot", b"\xff\x00\x01")
    os.setxattr(j("setuid-tool"), "user.b", b"second")
    os.setxattr(j("setuid-tool"), "user.a", b"")
    os.mknod(j("console"), 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    os.mknod(j("disk"), 0o660 | stat.S_IFBLK, os.makedev(259, 3))
    os.chown(j("disk"), 0, 6)
    os.mkfifo(j("initctl"), 0o600)
    os.symlink(b"/nowhere/\xe9t\xe9", os.path.join(os.fsencode(etc), b"non-utf8-target"))
    os.symlink("../usr/share/zoneinfo/UTC", j("localtime"))
    os.link(j("sudoers"), j("ssl/sudoers-link"))
    # read in several chunks (export.CHUNK), and one streamed (vfs.STREAM_ABOVE)
    for name, size in (("chunked.bin", 3 * export.CHUNK + 7), ("streamed.bin",
                                                                vfs.STREAM_ABOVE + 4099)):
        with open(j(name), "wb") as f:
            f.write(bytes(i * 7 % 251 for i in range(251)) * (size // 251)
                    + b"x" * (size % 251))
    os.utime(j("ssl/private"), ns=(1_234_567_890_123_456_789,) * 2)
    os.utime(j("console"), ns=(987_654_321,) * 2)
    os.utime(etc, ns=(1_700_000_000_000_000_001,) * 2)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Two commits whose /etc differ in one xattr value only."""
    base = tmp_path_factory.mktemp("export")
    src = make_sample_tree(str(base / "src"), big_file=False)
    odd_etc(os.path.join(src, "etc"))
    repo = str(base / "repo.git")
    first = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main",
                        "-m", "1").stdout.strip()
    os.setxattr(os.path.join(src, "etc", "setuid-tool"), "user.b", b"changed")
    second = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main",
                         "-m", "2").stdout.strip()
    os.setxattr(os.path.join(src, "etc", "setuid-tool"), "user.b", b"second")
    return src, repo, first, second


def without_links(shot):
    """A snapshot without hardlink structure (the link count and groups):
    a copy makes every file its own, as copy_tree does."""
    return {path: record[:8] + record[9:11] for path, record in shot.items()}


@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount")
def test_etc_from_the_repository_is_the_copy_through_the_mount(releases, tmp_path,
                                                                fuse_backend):
    src, repo, first, _ = releases
    with Mount(repo, first, tmp_path / "mnt") as m:
        etcmerge.copy_tree(os.path.join(m.mountpoint, "etc"), str(tmp_path / "through-mount"))
    export.write_directory(repo, first, b"etc", str(tmp_path / "from-repo"))
    from_mount = snapshot(str(tmp_path / "through-mount"))
    from_repo = snapshot(str(tmp_path / "from-repo"))
    assert compare(from_mount, from_repo) == []
    # and both are the published /etc (hardlinks become copies)
    assert compare(without_links(snapshot(os.path.join(src, "etc"))),
                   without_links(from_repo)) == []
    # the odd entries are all there to compare
    kinds = {stat.S_IFMT(r[0]) for r in from_repo.values()} | {r[0] for r in from_repo.values()}
    assert {stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFLNK} <= kinds
    assert from_repo[b"setuid-tool"][1] == 0o6751
    assert [n for n, _ in from_repo[b"setuid-tool"][9]] == [
        "security.capability", "trusted.gitroot", "user.a", "user.b"]
    assert from_repo[b"streamed.bin"][4] == vfs.STREAM_ABOVE + 4099


def test_the_comparison_sees_a_release_that_differs(releases, tmp_path):
    """Control: the /etc of a commit that differs in one xattr value is
    reported as differing in exactly that."""
    _, repo, first, second = releases
    export.write_directory(repo, first, b"etc", str(tmp_path / "first"))
    export.write_directory(repo, second, b"etc", str(tmp_path / "second"))
    problems = compare(snapshot(str(tmp_path / "first")), snapshot(str(tmp_path / "second")))
    assert len(problems) == 1 and problems[0].startswith("b'setuid-tool': xattrs"), problems


@pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount")
def test_boot_persist_builds_the_same_etc_from_the_repository(releases, tmp_path):
    """``gitroot boot-persist --repo`` (the boot script's call) keeps the same
    release and device /etc as the copy through the mount, merge included."""
    _, repo, first, second = releases
    kept = {}
    with Mount(repo, first, tmp_path / "mnt1") as m1, Mount(repo, second, tmp_path / "mnt2") as m2:
        for how in ("mount", "repo"):
            persist_dir = tmp_path / how / "persist"
            for commit, lower in ((first, m1.mountpoint), (second, m2.mountpoint)):
                root = tmp_path / how / f"root-{commit[:8]}"
                os.makedirs(root / "etc")
                args = ["boot-persist", "--persist-dir", persist_dir, "--lower", lower,
                        "--root", root, "--commit", commit]
                if how == "repo":
                    args += ["--repo", repo]
                gitroot_cmd(*args, env=dict(os.environ, GITROOT_CMDLINE="",
                                            PYTHONPATH=REPO_ROOT,
                                            GITROOT_RUN_DIR=str(tmp_path / how / "run")))
                if commit == first:
                    # a device change the merge into the second release keeps
                    os.chmod(persist_dir / "etc" / first / "device" / "sudoers", 0o400)
            kept[how] = {side: snapshot(str(persist_dir / "etc" / second / side))
                         for side in ("release", "device")}
    assert kept["repo"]["device"][b"sudoers"][1] == 0o400
    assert kept["repo"]["release"][b"sudoers"][1] == 0o440
    for how in kept:
        # each device makes its own machine-id, when the boot writes it
        device = kept[how]["device"]
        del device[b"machine-id"]
        device[b"."] = device[b"."][:5] + (0,) + device[b"."][6:]
    for side in ("release", "device"):
        assert compare(kept["mount"][side], kept["repo"][side]) == [], side


def test_a_corrupt_file_fails_the_etc_as_the_mount_would(tmp_path):
    """An object that does not hash to its id: the release's /etc is not
    built (MergeError naming the path), the boot goes on with an ephemeral
    /etc and one message, nothing half-built is left."""
    repo = pygit2.init_repository(str(tmp_path / "evil.git"), bare=True)
    good, bad = craft.blob(repo, b"hello\n"), craft.blob(repo, b"world\n")
    etc = craft.tree(repo, [(go.MODE_BLOB, b"good", good), (go.MODE_BLOB, b"bad", bad)])
    root = craft.with_manifest(repo, [(go.MODE_TREE, b"etc", etc)], craft.manifest(
        b"etc\td\t755\t0\t0\t1.000000000\t-",
        b"etc/bad\tf\t644\t0\t0\t1.000000000\t6",
        b"etc/good\tf\t644\t0\t0\t1.000000000\t6"))
    commit = craft.commit(repo, root)
    craft.corrupt_loose_object(repo, bad, b"WORLD\n")
    with pytest.raises(etcmerge.MergeError, match="/etc/bad: .*" + bad.hex()):
        export.write_directory(repo.path, commit, b"etc", str(tmp_path / "out"))
    lower, new_root = tmp_path / "lower", tmp_path / "root"
    os.makedirs(lower / "etc")
    os.makedirs(new_root / "etc")
    layout = Layout(str(tmp_path / "persist"))
    plan = prepare_boot(layout, commit, str(lower), str(new_root), {},
                        lambda out: export.write_directory(repo.path, commit, b"etc", out))
    assert plan.etc is None and not any(m.target.endswith("/etc") for m in plan.mounts)
    assert any(m.startswith("/etc cannot be prepared (/etc/bad: ") for m in plan.messages), \
        plan.messages
    assert os.listdir(layout.etc) == []


def test_an_etc_that_is_not_a_directory_is_refused(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    blob = craft.blob(repo, b"x\n")
    root = craft.with_manifest(repo, [(go.MODE_BLOB, b"etc", blob)],
                               craft.manifest(b"etc\tf\t644\t0\t0\t1.000000000\t2"))
    commit = craft.commit(repo, root)
    with pytest.raises(etcmerge.MergeError, match="/etc: not a directory"):
        export.write_directory(repo.path, commit, b"etc", str(tmp_path / "out"))
    with pytest.raises(etcmerge.MergeError, match="/usr: not in the release"):
        export.write_directory(repo.path, commit, b"usr", str(tmp_path / "out"))
