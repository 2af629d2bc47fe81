"""The filesystem view on repositories built in tmp_path: no FUSE here."""

import os
import shutil
import stat

import pygit2
import pytest

from gitroot.git import objects as go
from gitroot.errors import ManifestError, RepositoryError, SourceError
from gitroot.publish.importer import import_directory
from gitroot.serve import vfs
from gitroot.serve.vfs import EntryError, RootView, open_view
from tests import craft
from tests.sample_tree import make_sample_tree, snapshot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sample tree needs root (chown, mknod)")


@pytest.fixture(autouse=True, params=["parsed at mount", "parsed lazily"])
def manifest_parse(request, monkeypatch):
    """Every test under both ways a manifest is read: whole at mount (a
    small one, as every tree here) and directory by directory (a large one)."""
    if request.param == "parsed lazily":
        monkeypatch.setattr(vfs, "PARSE_AT_MOUNT", 0)
    return request.param


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    base = tmp_path_factory.mktemp("sample")
    src = make_sample_tree(str(base / "src"), big_file=False)
    result = import_directory(src, str(base / "repo.git"), "main", "sample")
    return src, str(base / "repo.git"), result


@needs_root
def test_view_matches_source(sample):
    src, repo, result = sample
    view = open_view(repo, "main")
    expected = snapshot(src)
    seen = set()
    for path, node in view.walk():
        seen.add(path)
        kind, mode, uid, gid, size, mtime, target, rdev, nlink, xattrs, digest = expected[path][:11]
        a = node.attrs
        assert stat.S_IFMT(a["st_mode"]) == kind, path
        assert stat.S_IMODE(a["st_mode"]) == mode, path
        assert (a["st_uid"], a["st_gid"], a["st_mtime"]) == (uid, gid, mtime), path
        assert a["st_nlink"] == nlink, path
        if size is not None:
            assert a["st_size"] == size, path
        if rdev is not None:
            assert (os.major(a["st_rdev"]), os.minor(a["st_rdev"])) == rdev
        if target is not None:
            assert view.readlink(path) == target
        assert tuple((k.decode(), v) for k, v in view.xattrs(path)) == xattrs, path
        if stat.S_ISREG(kind):
            import hashlib
            assert hashlib.sha256(view.read_file(path, 1 << 30, 0)).hexdigest() == digest
    assert seen == set(expected)
    assert b".gitroot" not in view.listdir(b".")


@needs_root
def test_inodes_are_stable_and_hardlinks_share(sample):
    _, repo, _ = sample
    a = {p: n.attrs["st_ino"] for p, n in open_view(repo, "main").walk()}
    b = {p: n.attrs["st_ino"] for p, n in open_view(repo, "main").walk()}
    assert a == b
    assert a[b"bin/gzip"] == a[b"bin/gunzip"] == a[b"usr/zcat"]
    assert len({v for k, v in a.items()}) == len(a) - 3   # two extra gzip links, one hostname link
    assert a[b"."] == 1


@needs_root
def test_read_ranges(sample):
    _, repo, _ = sample
    view = open_view(repo, "main")
    assert view.read_file(b"etc/hostname", 4, 0) == b"gitr"
    assert view.read_file(b"etc/hostname", 100, 4) == b"oot-sample\n"
    assert view.read_file(b"etc/hostname", 10, 1000) == b""
    with pytest.raises(IsADirectoryError):
        view.read_file(b"etc", 10, 0)


@needs_root
def test_second_import_reuses_unchanged_files(sample, tmp_path):
    src, shared_repo, first = sample
    repo = str(tmp_path / "repo.git")       # a copy: the module's repository stays as it was
    shutil.copytree(shared_repo, repo, symlinks=True)
    with open(os.path.join(src, "etc/new-file"), "w") as f:
        f.write("new\n")
    try:
        second = import_directory(src, repo, "main", "second")
    finally:
        os.unlink(os.path.join(src, "etc/new-file"))
    assert second.stats.files_hashed <= 2          # the new file (and at most a racy one)
    assert second.stats.files_from_cache >= second.stats.files - 2
    r = pygit2.Repository(repo)
    assert str(r.revparse_single("main").parents[0].id) == first.commit


def test_errors_for_missing_repo_and_unknown_rev(tmp_path):
    with pytest.raises(RepositoryError, match="no such repository"):
        open_view(str(tmp_path / "nope.git"), "main")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    import_directory(str(src), str(tmp_path / "r.git"), "main", "m")
    with pytest.raises(RepositoryError, match="unknown revision 'nope'"):
        open_view(str(tmp_path / "r.git"), "nope")
    with pytest.raises(RepositoryError, match="invalid revision"):
        open_view(str(tmp_path / "r.git"), "--upload-pack=x")


def test_commit_refuses_the_reserved_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / ".gitroot").mkdir()
    with pytest.raises(SourceError, match="reserved"):
        import_directory(str(src), str(tmp_path / "r.git"), "main", "m")


def _run_cli_as_nobody(argv, cwd):
    """``gitroot ARGV`` as uid/gid 65534, in a forked child of this process.

    A fresh interpreter would have to reach the checkout (and a virtualenv
    inside it), which nobody cannot when it sits in a 0700 directory such as
    /root; the forked child has everything the verb needs imported before it
    drops root.  Returns (exit status, stdout, stderr).
    """
    import io
    import logging
    import sys

    import pygit2

    import gitroot.cli
    import gitroot.cli.commit  # noqa: F401  (imported here, while root)
    # and what the verb imports only when it runs (its channel binding,
    # its signer), which nobody could not import from a checkout in /root
    import gitroot.signing.channel  # noqa: F401
    import gitroot.signing.sign  # noqa: F401

    out_path, err_path = os.path.join(cwd, "stdout"), os.path.join(cwd, "stderr")
    pid = os.fork()
    if pid == 0:
        status = 70
        try:
            os.chdir(cwd)
            # isolated_git_config pointed libgit2 at pytest's 0700 tmp directory
            for name in ("GIT_CONFIG_LEVEL_SYSTEM", "GIT_CONFIG_LEVEL_XDG",
                         "GIT_CONFIG_LEVEL_GLOBAL"):
                level = getattr(pygit2, name, None)
                if level is None:
                    level = getattr(pygit2.enums.ConfigLevel, name[len("GIT_CONFIG_LEVEL_"):])
                pygit2.settings.search_path[level] = cwd
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.environ["HOME"] = cwd
            sys.stdout = io.TextIOWrapper(open(out_path, "wb"), write_through=True)
            sys.stderr = io.TextIOWrapper(open(err_path, "wb"), write_through=True)
            logging.root.handlers.clear()       # pytest's; main() installs its own
            status = gitroot.cli.main(argv)
        except BaseException:                   # report it; never return into pytest
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    with open(out_path) as out, open(err_path) as err:
        return os.waitstatus_to_exitcode(wait_status), out.read(), err.read()


@pytest.mark.parametrize("what,message", [
    ("file", "secret: cannot read: Permission denied"),
    ("dir", "private: cannot list directory: Permission denied"),
])
def test_commit_names_the_path_it_cannot_read(what, message):
    """Run as an unprivileged user (root reads everything), as a publisher
    who is not root would."""
    import shutil
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("needs root to create files the unprivileged user cannot read")
    base = tempfile.mkdtemp(prefix="gitroot-unpriv-", dir="/tmp")
    try:
        os.chmod(base, 0o777)
        src = os.path.join(base, "src")
        os.mkdir(src)
        os.chmod(src, 0o755)
        with open(os.path.join(src, "fine"), "w") as f:
            f.write("ok")
        if what == "file":
            with open(os.path.join(src, "secret"), "w") as f:
                f.write("x")
            os.chmod(os.path.join(src, "secret"), 0o600)
        else:
            os.mkdir(os.path.join(src, "private"), 0o700)
        status, stdout, stderr = _run_cli_as_nobody(
            ["commit", src, "--repo", os.path.join(base, "r.git"), "--branch", "main"], base)
        assert status == SourceError.exit_code, stderr
        assert stderr.strip().splitlines() == [f"gitroot: error: /{message}"]
        assert stdout == ""
    finally:
        shutil.rmtree(base)


def test_commit_names_an_unreadable_directory(tmp_path):
    # A path that vanishes between listing and reading (a race an import must
    # report, not crash on) is provoked with a FIFO-free trick: a dangling
    # source directory.
    with pytest.raises(SourceError, match="No such file or directory"):
        import_directory(str(tmp_path / "missing"), str(tmp_path / "r.git"), "main", "m")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="not a directory"):
        import_directory(str(tmp_path / "file"), str(tmp_path / "r.git"), "main", "m")


# -- hostile repositories -----------------------------------------------------

FILE_LINE = b"f\tf\t644\t0\t0\t1700000000.000000000\t5"


@pytest.fixture
def repo(tmp_path):
    return pygit2.init_repository(str(tmp_path / "evil.git"), bare=True)


def view_of(repo, items, manifest_text):
    root = craft.with_manifest(repo, items, manifest_text)
    return RootView(repo, craft.commit(repo, root))


@pytest.mark.parametrize("name", [b".", b"..", b".git", b".GIT", b"a/b", b"../../etc", b""])
def test_bad_tree_names_are_never_served(repo, name, caplog):
    good = craft.blob(repo, b"hello")
    view = view_of(repo, [(go.MODE_BLOB, name, good), (go.MODE_BLOB, b"f", good)],
                   craft.manifest(FILE_LINE))
    assert view.listdir(b".") == [b"f"]
    assert "not served" in caplog.text
    if name not in (b".", b""):
        with pytest.raises((FileNotFoundError, EntryError)):
            view.lookup(name)


def test_duplicate_names_are_io_errors(repo, caplog):
    a = craft.blob(repo, b"hello")
    b = craft.blob(repo, b"other")
    root = craft.tree(repo, [(go.MODE_BLOB, b"f", a), (go.MODE_BLOB, b"f", b)], sort=False)
    items = go.parse_tree(repo.odb.read(pygit2.Oid(raw=root))[1])
    view = view_of(repo, [tuple(i) for i in items], craft.manifest(FILE_LINE))
    with pytest.raises(EntryError, match="twice"):
        view.getattr(b"f")
    assert "twice" in caplog.text


def test_missing_manifest_is_refused(repo):
    root = craft.tree(repo, [(go.MODE_BLOB, b"f", craft.blob(repo, b"hello"))])
    with pytest.raises(ManifestError, match="no gitroot manifest"):
        RootView(repo, craft.commit(repo, root))


def test_malformed_manifest_header_is_refused(repo):
    with pytest.raises(ManifestError, match="does not start"):
        view_of(repo, [], b"this is not a manifest\n")


def test_bad_manifest_line_makes_only_that_entry_an_error(repo, caplog):
    good = craft.blob(repo, b"hello")
    view = view_of(repo, [(go.MODE_BLOB, b"f", good), (go.MODE_BLOB, b"g", good)],
                   craft.manifest(FILE_LINE, b"g\tf\t99999\t0\t0\t1.000000000\t5"))
    assert view.getattr(b"f")["st_size"] == 5
    with pytest.raises(EntryError, match="line 4"):
        view.getattr(b"g")
    assert "manifest line 4 rejected" in caplog.text


def test_manifest_path_missing_from_tree_is_an_error(repo):
    view = view_of(repo, [], craft.manifest(FILE_LINE))
    with pytest.raises(EntryError, match="no such entry"):
        view.getattr(b"f")


def test_manifest_kind_or_size_disagreeing_with_tree(repo):
    good = craft.blob(repo, b"hello")
    view = view_of(repo, [(go.MODE_BLOB, b"d", good), (go.MODE_BLOB, b"f", good)],
                   craft.manifest(b"d\td\t755\t0\t0\t1.000000000\t-",
                                  b"f\tf\t644\t0\t0\t1.000000000\t4"))
    with pytest.raises(EntryError, match="kind"):
        view.getattr(b"d")
    with pytest.raises(EntryError, match="manifest says 4 bytes"):
        view.read_file(b"f", 10, 0)


def test_impossible_manifest_values(repo):
    good = craft.blob(repo, b"hello")
    lines = [b"a\tf\t644\t99999999999\t0\t1.000000000\t5",
             b"b\tc\t644\t0\t0\t1.000000000\t-\trdev=1:99999999999",
             b"c\tf\t644\t0\t0\t99999999999999.000000000\t5"]
    view = view_of(repo, [(go.MODE_BLOB, n, good) for n in (b"a", b"c")],
                   craft.manifest(*lines))
    for name in (b"a", b"b", b"c"):
        with pytest.raises(EntryError):
            view.getattr(name)


def test_missing_blob_is_an_io_error(repo, caplog):
    blob = craft.blob(repo, b"hello")
    view = view_of(repo, [(go.MODE_BLOB, b"f", blob)], craft.manifest(FILE_LINE))
    craft.remove_loose_object(repo, blob)
    with pytest.raises(EntryError, match="missing"):
        view.read_file(b"f", 10, 0)
    assert "missing" in caplog.text


def test_corrupt_blob_is_never_served(repo):
    blob = craft.blob(repo, b"hello")
    view = view_of(repo, [(go.MODE_BLOB, b"f", blob)], craft.manifest(FILE_LINE))
    craft.corrupt_loose_object(repo, blob, b"HELLO")    # same size, other bytes
    with pytest.raises(EntryError):
        view.read_file(b"f", 10, 0)


def test_corrupt_tree_is_an_io_error(repo):
    inner_blob = craft.blob(repo, b"hello")
    sub = craft.tree(repo, [(go.MODE_BLOB, b"f", inner_blob)])
    view = view_of(repo, [(go.MODE_TREE, b"d", sub)],
                   craft.manifest(b"d\td\t755\t0\t0\t1.000000000\t-",
                                  b"d/f\tf\t644\t0\t0\t1.000000000\t5"))
    craft.corrupt_loose_object(repo, sub, b"garbage", type_name=b"tree")
    with pytest.raises(EntryError):
        view.listdir(b"d")


def test_submodule_is_an_empty_directory(repo):
    view = view_of(repo, [(go.MODE_GITLINK, b"sub", b"\x11" * 20)],
                   craft.manifest(b"sub\td\t755\t0\t0\t1.000000000\t-"))
    assert stat.S_ISDIR(view.getattr(b"sub")["st_mode"])
    assert view.listdir(b"sub") == []


def test_entry_without_manifest_line_gets_git_defaults(repo):
    blob = craft.blob(repo, b"#!/bin/sh\n")
    view = view_of(repo, [(go.MODE_EXEC, b"run", blob)], craft.manifest())
    a = view.getattr(b"run")
    assert stat.S_IMODE(a["st_mode"]) == 0o755 and a["st_uid"] == 0
    assert a["st_size"] == 10


def test_name_with_nul_corrupts_only_its_directory(repo, caplog):
    """A NUL inside a name cannot be stored in a tree: the raw bytes misparse,
    and the directory holding it is an I/O error while the rest is served."""
    good = craft.blob(repo, b"hello")
    raw = b"100644 a\0b\0" + good         # name 'a', then 'b\0' eats into the id
    sub = repo.odb.write(go.OBJ_TREE, raw).raw
    view = view_of(repo, [(go.MODE_TREE, b"d", sub), (go.MODE_BLOB, b"f", good)],
                   craft.manifest(b"d\td\t755\t0\t0\t1.000000000\t-", FILE_LINE))
    with pytest.raises(EntryError, match="directory unreadable"):
        view.listdir(b"d")
    assert view.getattr(b"f")["st_size"] == 5
    assert "directory unreadable" in caplog.text


def test_unknown_tree_entry_mode_is_an_io_error(repo):
    good = craft.blob(repo, b"hello")
    view = view_of(repo, [(0o100664, b"odd", good), (go.MODE_BLOB, b"f", good)],
                   craft.manifest(FILE_LINE))
    with pytest.raises(EntryError, match="unknown tree entry mode 100664"):
        view.getattr(b"odd")
    assert view.getattr(b"f")["st_size"] == 5


def test_object_of_the_wrong_type_is_an_io_error(repo):
    good = craft.blob(repo, b"hello")
    # a "directory" whose id names a blob
    view = view_of(repo, [(go.MODE_TREE, b"d", good)],
                   craft.manifest(b"d\td\t755\t0\t0\t1.000000000\t-"))
    with pytest.raises(EntryError, match="expected a tree"):
        view.listdir(b"d")


def test_corrupt_root_tree_refuses_the_mount(repo):
    root = repo.odb.write(go.OBJ_TREE, b"100644 x\0short").raw
    with pytest.raises(ManifestError, match="corrupt root tree"):
        RootView(repo, craft.commit(repo, root))


def test_interleaved_reads_of_several_files(tmp_path):
    """Two readers taking turns (as two processes would) each get their own
    bytes; the blobs kept between reads never mix files up."""
    src = tmp_path / "src"
    src.mkdir()
    contents = {f"f{i}".encode(): os.urandom(300_000 + i) for i in range(12)}
    for name, data in contents.items():
        (src / name.decode()).write_bytes(data)
    import_directory(str(src), str(tmp_path / "r.git"), "main", "m")
    view = open_view(str(tmp_path / "r.git"), "main")
    got = {name: b"" for name in contents}
    chunk = 128 * 1024
    while any(len(got[n]) < len(d) for n, d in contents.items()):
        for name, data in contents.items():
            if len(got[name]) < len(data):
                got[name] += view.read_file(name, chunk, len(got[name]))
    assert got == contents
    assert not view._recent          # every file was read to its end


def test_a_blob_read_out_of_order_is_inflated_once(tmp_path, monkeypatch):
    """A program's pages fault anywhere in its executable: the blob is
    kept between such reads (until pushed out), not inflated per read; one
    read in order to its end is dropped at once."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300_000)
    (src / "exe").write_bytes(data)
    (src / "doc").write_bytes(data[::-1])
    import_directory(str(src), str(tmp_path / "r.git"), "main", "m")
    view = open_view(str(tmp_path / "r.git"), "main")
    inflated = []
    real_read = view._read

    def counting_read(oid, want, what):
        if want == go.OBJ_BLOB:
            inflated.append(oid)
        return real_read(oid, want, what)

    monkeypatch.setattr(view, "_read", counting_read)
    # from the start, then forward with a gap to the end, then back: the
    # way an executable's pages fault, not a reader in order
    for offset in (0, 131072, 262144, 65536, 196608, 262144):
        assert view.read_file(b"exe", 65536, offset) == data[offset:offset + 65536]
    assert len(inflated) == 1 and b"exe" in view._recent
    for offset in range(0, 300_000, 65536):
        assert view.read_file(b"doc", 65536, offset) == data[::-1][offset:offset + 65536]
    assert len(inflated) == 2 and b"doc" not in view._recent
    # the kernel reading again the tail it no longer caches: in order too
    for offset in range(131072, 300_000, 65536):
        assert view.read_file(b"doc", 65536, offset) == data[::-1][offset:offset + 65536]
    assert len(inflated) == 3 and b"doc" not in view._recent


def _hostile_dir(tmp_path, *lines):
    repo = pygit2.init_repository(str(tmp_path / "evil.git"), bare=True)
    good = craft.blob(repo, b"hello")
    items = [(go.MODE_BLOB, b"f", good)]
    root = craft.with_manifest(repo, items, craft.manifest(
        b"dev\td\t755\t0\t0\t1.000000000\t-",
        *lines,
        b"f\tf\t644\t0\t0\t1.000000000\t5"))
    return RootView(repo, craft.commit(repo, root))


@pytest.mark.parametrize("rdev", [b"2147483648:0", b"4294967295:4294967295", b"4096:0",
                                  b"0:1048576"])
def test_device_number_beyond_linux_costs_only_its_entry(tmp_path, rdev):
    """rdev=2147483648:0 is inside the manifest's range but made os.makedev
    raise OverflowError, and the whole directory answered EIO."""
    view = _hostile_dir(tmp_path, b"dev/evil\tc\t600\t0\t0\t1.000000000\t-\trdev=" + rdev,
                        b"dev/null\tc\t666\t0\t0\t1.000000000\t-\trdev=1:3")
    assert view.listdir(b"dev") == [b"evil", b"null"]
    assert os.major(view.getattr(b"dev/null")["st_rdev"]) == 1
    with pytest.raises(EntryError, match="beyond Linux"):
        view.getattr(b"dev/evil")
    assert view.read_file(b"f", 10, 0) == b"hello"


def test_largest_linux_device_number_is_served(tmp_path):
    view = _hostile_dir(tmp_path, b"dev/big\tb\t600\t0\t0\t1.000000000\t-\trdev=4095:1048575")
    rdev = view.getattr(b"dev/big")["st_rdev"]
    assert (os.major(rdev), os.minor(rdev)) == (4095, 1048575)


def test_overlong_names_cost_only_their_entry(tmp_path):
    """A name of over ~4 KiB made its directory unlistable through FUSE; no
    name over NAME_MAX (255) is served, from the tree or the manifest."""
    long_name = b"n" * 4100
    view = _hostile_dir(tmp_path,
                        b"dev/" + b"m" * 256 + b"\tp\t644\t0\t0\t1.000000000\t-",
                        b"dev/" + b"k" * 255 + b"\tp\t644\t0\t0\t1.000000000\t-")
    assert view.listdir(b"dev") == [b"k" * 255]
    repo = view.repo
    good = craft.blob(repo, b"hello")
    root = craft.with_manifest(repo, [(go.MODE_BLOB, b"f", good),
                                      (go.MODE_BLOB, long_name, good)],
                               craft.manifest(b"f\tf\t644\t0\t0\t1.000000000\t5",
                                              long_name + b"\tf\t644\t0\t0\t1.000000000\t5"))
    view = RootView(repo, craft.commit(repo, root))
    assert view.listdir(b".") == [b"f"]
    assert view.read_file(b"f", 10, 0) == b"hello"


@pytest.mark.parametrize("cap,value", [("MAX_ENTRIES", 3), ("MAX_MANIFEST_BYTES", 100)])
def test_manifest_beyond_the_cap_is_refused_in_one_line(tmp_path, monkeypatch, cap, value):
    """A 2-million-line manifest cost the daemon 2.1 GiB; beyond the
    documented cap a commit is refused before its manifest is parsed."""
    from gitroot.git import manifest as mf
    repo = pygit2.init_repository(str(tmp_path / "big.git"), bare=True)
    lines = [b"p%d\tp\t644\t0\t0\t1.000000000\t-" % i for i in range(4)]
    commit = craft.commit(repo, craft.with_manifest(repo, [], craft.manifest(*lines)))
    RootView(repo, commit)                   # within today's caps
    monkeypatch.setattr(mf, cap, value)
    with pytest.raises(ManifestError, match="more than the") as info:
        RootView(repo, commit)
    assert "\n" not in str(info.value)
