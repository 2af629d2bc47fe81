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
from gitroot.serve import vfs
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
