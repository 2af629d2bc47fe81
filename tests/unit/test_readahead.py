"""Read-ahead across files (gitroot.serve.readahead) and the libgit2 reader
it uses from worker threads (gitroot.git.rawodb), on repositories built in
tmp_path: no FUSE here (the mount tests read through it as well)."""

import os
import threading
import time

import pygit2
import pytest

from gitroot.git import objects as go
from gitroot.git import rawodb
from gitroot.publish.importer import import_directory
from gitroot.serve import readahead, vfs
from gitroot.serve.readahead import Readahead
from gitroot.serve.vfs import EntryError, open_view
from tests import craft


def _tree(base, layout):
    """Files under *base* from {relative path: bytes}."""
    for rel, data in layout.items():
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def _in_listing_order(view, path=b"."):
    """Every file's path, depth first in listing order (tar's order)."""
    for name, kid in view.children(view.lookup(path)).items():
        sub = name if path == b"." else path + b"/" + name
        if kid.kind == "d":
            yield from _in_listing_order(view, sub)
        elif kid.kind == "f":
            yield sub


def _read_all(view, path, chunk=64 << 10):
    # a reader through FUSE leaves the loop idle between its requests;
    # here the workers get that time explicitly
    time.sleep(0.005)
    out, offset = b"", 0
    while True:
        data = view.read_file(path, chunk, offset)
        out += data
        offset += len(data)
        if len(data) < chunk:
            return out


@pytest.fixture
def tree(tmp_path):
    layout = {f"a/{i:02d}": os.urandom(1000 + 37 * i) for i in range(20)}
    layout.update({f"a/m/{i}": os.urandom(5000 + i) for i in range(5)})
    layout.update({f"b/{i:02d}": os.urandom(300 + i) for i in range(10)})
    _tree(str(tmp_path / "src"), layout)
    import_directory(str(tmp_path / "src"), str(tmp_path / "r.git"), "main", "m")
    return str(tmp_path / "r.git"), {k.encode(): v for k, v in layout.items()}


def test_rawodb_reads_what_pygit2_reads_from_another_thread(tree):
    repo_path, layout = tree
    repo = pygit2.Repository(repo_path)
    commit = repo.revparse_single("main")
    raw = rawodb.open_odb(repo, commit.id.raw)
    assert raw is not None, "libgit2 could not be called through ctypes"
    blob = repo.revparse_single("main:a/03")
    got = []
    worker = threading.Thread(target=lambda: got.append(raw.read(blob.id.raw)))
    worker.start()
    worker.join()
    assert got == [(go.OBJ_BLOB, layout[b"a/03"])]
    assert raw.read(b"\x01" * 20) is None            # missing
    assert raw.read(b"\x01" * 19) is None            # not an id
    another = raw.another()                           # for a second thread
    assert another.read(blob.id.raw) == (go.OBJ_BLOB, layout[b"a/03"])
    another.close()
    raw.close()


def test_rawodb_refuses_what_does_not_hash_to_its_id(tmp_path):
    """libgit2's strict verification holds for this way of reading too."""
    repo, commit, good, bad = craft.good_and_corrupt(str(tmp_path / "r.git"))
    raw = rawodb.open_odb(repo, bytes.fromhex(commit))
    assert raw.read(good) == (go.OBJ_BLOB, b"hello")
    assert raw.read(bad) is None
    raw.close()


def test_a_tree_read_in_order_is_read_ahead(tree):
    repo_path, layout = tree
    view = open_view(repo_path, "main")
    assert view.enable_readahead()
    try:
        order = list(_in_listing_order(view))
        assert sorted(order) == sorted(layout)
        for path in order:
            assert _read_all(view, path) == layout[path], path
        # all but the first three (a run of three starts it), across
        # directories: a/, a/m/ (inside a/'s listing) and b/
        assert view._ahead.served >= len(order) - 3
    finally:
        view.close()
    assert not view._recent


def test_a_program_reading_here_and_there_is_not_read_ahead(tree):
    repo_path, layout = tree
    view = open_view(repo_path, "main")
    assert view.enable_readahead()
    try:
        order = sorted(layout)
        # never three neighbours of one directory in a row
        scattered = order[::3] + order[1::3] + order[2::3]
        for path in scattered:
            assert _read_all(view, path) == layout[path]
        assert view._ahead.served == 0
    finally:
        view.close()


def test_a_corrupt_blob_read_ahead_is_still_an_io_error(tmp_path, caplog):
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    contents = {b"f%d" % i: b"content %d" % i for i in range(8)}
    blobs = {name: craft.blob(repo, data) for name, data in contents.items()}
    lines = [b"%s\tf\t644\t0\t0\t1.000000000\t%d" % (name, len(data))
             for name, data in contents.items()]
    root = craft.with_manifest(repo, [(go.MODE_BLOB, name, oid) for name, oid in blobs.items()],
                               craft.manifest(*lines))
    view = vfs.RootView(repo, craft.commit(repo, root))
    craft.corrupt_loose_object(repo, blobs[b"f5"], b"CONTENT 5")    # same size
    assert view.enable_readahead()
    try:
        for name, data in contents.items():
            time.sleep(0.005)                   # as between FUSE requests
            if name == b"f5":
                with pytest.raises(EntryError):
                    view.read_file(name, 100, 0)
            else:
                assert view.read_file(name, 100, 0) == data
        assert view._ahead.served >= 4          # f3, f4, f6, f7 at least
    finally:
        view.close()
    assert "f5" in caplog.text


def test_streamed_blobs_are_verified_ahead(tmp_path, monkeypatch):
    monkeypatch.setattr(vfs, "STREAM_ABOVE", 64 << 10)
    layout = {f"d/{i}": os.urandom(200_000 + i if i % 2 else 3000 + i) for i in range(8)}
    _tree(str(tmp_path / "src"), layout)
    import_directory(str(tmp_path / "src"), str(tmp_path / "r.git"), "main", "m")
    view = open_view(str(tmp_path / "r.git"), "main")
    assert view.enable_readahead()
    try:
        for path in _in_listing_order(view):
            assert _read_all(view, path) == layout[path.decode()]
        assert view._ahead.served >= 5
        assert view._streams                   # streamed ones were served as streams
    finally:
        view.close()


class _Reader:
    closed = False

    def close(self):
        self.closed = True


def _wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_what_is_loaded_ahead_stays_within_its_budget():
    loaded = []
    reader = _Reader()

    def load(_reader, oid, size):
        loaded.append(oid)
        return b"x" * size

    ahead = Readahead([reader], load, budget=3 << 20)
    items = [(bytes([i]) * 20, 1 << 20, 1 << 20) for i in range(10)]
    ahead.want(items)
    _wait_for(lambda: len(loaded) == 3)
    time.sleep(0.2)                     # a worker ignoring the budget would go on
    assert len(loaded) == 3
    assert ahead.take(items[0][0]) == b"x" * (1 << 20)
    _wait_for(lambda: len(loaded) == 4)
    assert ahead.take(items[5][0]) is None       # not loaded: the caller reads it
    ahead.close()
    assert reader.closed


def test_want_forgets_what_it_no_longer_names():
    def load(_reader, oid, size):
        return None if oid == b"b" * 20 else oid * 2

    ahead = Readahead([_Reader(), _Reader()], load, budget=1 << 20)
    ahead.want([(b"a" * 20, 40, 40), (b"b" * 20, 40, 40)])
    _wait_for(lambda: ahead._held == 40 and not ahead._busy and not ahead._queue)
    assert ahead.take(b"b" * 20) is None         # the loader left it to the caller
    ahead.want([(b"c" * 20, 40, 40)])
    _wait_for(lambda: ahead._held == 40 and not ahead._busy and not ahead._queue)
    assert ahead.take(b"a" * 20) is None         # dropped: no longer wanted
    assert ahead.take(b"c" * 20) == b"c" * 40
    assert ahead.served == 1
    ahead.close()


def test_also_goes_first_and_forgets_nothing_wanted():
    order = []
    gate = threading.Event()

    def load(_reader, oid, size):
        gate.wait(10)
        order.append(oid)
        return oid

    ahead = Readahead([_Reader()], load, budget=1 << 20)
    ahead.want([(b"a" * 20, 20, 20), (b"b" * 20, 20, 20)])
    _wait_for(lambda: ahead._busy)               # the worker holds "a"
    ahead.also([(b"x" * 20, 20, 20), (b"b" * 20, 20, 20)])   # b is queued already
    gate.set()
    _wait_for(lambda: len(order) == 3)
    assert order == [b"a" * 20, b"x" * 20, b"b" * 20]
    assert [ahead.take(o * 20) for o in (b"a", b"b", b"x")] == [b"a" * 20, b"b" * 20, b"x" * 20]
    ahead.close()


def test_what_also_loaded_and_nobody_took_is_dropped(monkeypatch):
    monkeypatch.setattr(readahead, "EXTRA_SECONDS", 0.05)
    ahead = Readahead([_Reader()], lambda _r, oid, size: oid, budget=60)
    ahead.also([(b"l" * 20, 40, 40)])            # a library whose pages stayed cached
    _wait_for(lambda: ahead._held == 40 and not ahead._busy and not ahead._queue)
    time.sleep(0.1)
    # the next call drops it, so its cost no longer holds the budget
    ahead.also([(b"m" * 20, 40, 40)])
    _wait_for(lambda: not ahead._busy and not ahead._queue and b"m" * 20 in ahead._ready)
    assert ahead.take(b"l" * 20) is None
    assert ahead.take(b"m" * 20) == b"m" * 20
    ahead.close()


def _elf_tree(tmp_path, machine_dir):
    """A root with two programs and the libraries they need, linked the
    way Debian installs them (lib -> usr/lib, libfoo.so.1 -> libfoo.so.1.2)."""
    src = tmp_path / "src"
    lib = src / "usr" / "lib" / machine_dir
    lib.mkdir(parents=True)
    (src / "bin").mkdir()
    os.symlink("usr/lib", src / "lib")
    (lib / "libfoo.so.1.2").write_bytes(craft.elf_image([b"libbar.so"], size=30000))
    os.symlink("libfoo.so.1.2", lib / "libfoo.so.1")
    (lib / "libbar.so").write_bytes(craft.elf_image([], size=20000))
    (src / "opt").mkdir()
    (src / "opt" / "libown.so").write_bytes(b"own" * 5000)
    (src / "bin" / "prog").write_bytes(
        craft.elf_image([b"libfoo.so.1", b"libown.so", b"libmissing.so.3"],
                        runpath=b"/opt", size=50000))
    (src / "bin" / "other").write_bytes(craft.elf_image([b"libfoo.so.1"], size=40000))
    import_directory(str(src), str(tmp_path / "r.git"), "main", "m")
    return str(tmp_path / "r.git")


def test_the_libraries_of_an_executable_are_read_ahead(tmp_path):
    if not vfs.LIBRARY_DIRS[0].startswith(b"/lib/"):
        pytest.skip("no multiarch directory known for this machine")
    machine_dir = vfs.LIBRARY_DIRS[0].rsplit(b"/", 1)[1].decode()
    view = open_view(_elf_tree(tmp_path, machine_dir), "main")
    assert view.enable_readahead()
    try:
        assert view.read_file(b"bin/prog", 4096, 0)[:4] == b"\x7fELF"
        foo = view.lookup(f"usr/lib/{machine_dir}/libfoo.so.1.2".encode())
        own = view.lookup(b"opt/libown.so")
        # asked for: through the symlinks (lib -> usr/lib, .so.1 -> .so.1.2)
        # and in the executable's DT_RUNPATH; the missing one is left out
        _wait_for(lambda: foo.oid in view._ahead._ready and own.oid in view._ahead._ready)
        time.sleep(0.005)
        assert view.read_file(f"usr/lib/{machine_dir}/libfoo.so.1.2".encode(), 100, 0)
        assert view._ahead.served == 1
        # libfoo's own first read asked for libbar in turn
        bar = view.lookup(f"usr/lib/{machine_dir}/libbar.so".encode())
        _wait_for(lambda: bar.oid in view._ahead._ready)
        # a second program needing a library already read asks for nothing
        queued_before = dict(view._ahead._ready)
        view.read_file(b"bin/other", 4096, 0)
        assert dict(view._ahead._ready).keys() == queued_before.keys()
    finally:
        view.close()


def test_libraries_are_not_read_ahead_during_a_tree_read_in_order(tmp_path):
    machine_dir = (vfs.LIBRARY_DIRS[0].rsplit(b"/", 1)[1].decode()
                   if vfs.LIBRARY_DIRS[0].startswith(b"/lib/") else "x")
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    lib = src / "usr" / "lib" / machine_dir
    lib.mkdir(parents=True)
    for i in range(6):
        (lib / f"lib{i}.so").write_bytes(craft.elf_image([], size=9000 + i))
        (src / "bin" / f"p{i}").write_bytes(craft.elf_image([b"lib%d.so" % i], size=5000 + i))
    import_directory(str(src), str(tmp_path / "r.git"), "main", "m")
    view = open_view(str(tmp_path / "r.git"), "main")
    assert view.enable_readahead()
    asked = []
    also = view._ahead.also
    view._ahead.also = lambda items: (asked.append(len(items)), also(items))
    try:
        for i in range(6):
            time.sleep(0.005)
            assert view.read_file(b"bin/p%d" % i, 100 << 10, 0)[:4] == b"\x7fELF"
        if not vfs.LIBRARY_DIRS[0].startswith(b"/lib/"):
            assert asked == []          # nowhere to look: nothing asked
        else:
            # p0 and p1 ask for their library; from the third in a row on,
            # the reader goes through the tree in order (tar): none asked
            assert asked == [1, 1]
    finally:
        view.close()


def test_libraries_can_be_left_alone(tmp_path):
    machine_dir = (vfs.LIBRARY_DIRS[0].rsplit(b"/", 1)[1].decode()
                   if vfs.LIBRARY_DIRS[0].startswith(b"/lib/") else "x")
    view = open_view(_elf_tree(tmp_path, machine_dir), "main")
    assert view.enable_readahead(libraries=False)
    try:
        view.read_file(b"bin/prog", 4096, 0)
        time.sleep(0.05)
        assert not view._ahead._ready and not view._ahead._queue and not view._ahead._busy
    finally:
        view.close()


def test_a_hostile_library_path_costs_a_bounded_walk(tmp_path):
    """Symlinks that loop, or lead through thousands of components, end
    the search for that library (None), never the daemon."""
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "loop").mkdir()
    os.symlink("b", src / "loop" / "a")
    os.symlink("a", src / "loop" / "b")
    os.symlink("/" + "./" * 1000 + "x/" * 1000, src / "loop" / "long")
    (src / "bin" / "prog").write_bytes(craft.elf_image(
        [b"a", b"long"] + [b"lib%d.so" % i for i in range(60)],
        runpath=b":".join([b"/loop"] * 20), size=8000))
    os.makedirs(src / "deep" / "/".join(["d"] * 300))
    import_directory(str(src), str(tmp_path / "r.git"), "main", "m")
    view = open_view(str(tmp_path / "r.git"), "main")
    assert view._resolve(b"/deep/" + b"/".join([b"d"] * 200)).kind == "d"
    assert view._resolve(b"/deep/" + b"/".join([b"d"] * 300)) is None     # too many steps
    assert view._resolve(b"/loop/a") is None
    assert view._resolve(b"/loop/long/y") is None
    assert view._resolve(b"/bin/prog/x") is None        # a file is no directory
    assert view._resolve(b"/loop/../bin/./prog").kind == "f"
    assert view.enable_readahead()
    try:
        started = time.monotonic()
        assert view.read_file(b"bin/prog", 100, 0)[:4] == b"\x7fELF"
        assert time.monotonic() - started < 5
        assert not view._ahead._queue and not view._ahead._ready
    finally:
        view.close()
