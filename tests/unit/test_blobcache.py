"""The passthrough lever's blob cache: only bytes that hash to their blob id
are ever named, or handed out, and the cache stays within its bound."""

import hashlib
import os

from gitroot.serve.blobcache import BlobCache


def blob_id(data: bytes, algo=hashlib.sha1) -> bytes:
    return algo(b"blob %d\0" % len(data) + data).digest()


def read_fd(fd: int) -> bytes:
    try:
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)


def test_fill_then_open_verified(tmp_path):
    cache = BlobCache(str(tmp_path / "c"), 1 << 20)
    data = b"hello world\n" * 1000
    oid = blob_id(data)
    assert cache.open_verified(oid, len(data)) is None
    assert read_fd(cache.fill(oid, len(data), [data[:100], data[100:]])) == data
    assert os.listdir(tmp_path / "c") == [oid.hex()]
    assert read_fd(BlobCache(str(tmp_path / "c"), 1 << 20).open_verified(oid, len(data))) == data


def test_sha256_ids(tmp_path):
    cache = BlobCache(str(tmp_path / "c"), 1 << 20)
    data = b"sha256 repository"
    oid = blob_id(data, hashlib.sha256)
    assert read_fd(cache.fill(oid, len(data), [data])) == data
    assert read_fd(cache.open_verified(oid, len(data))) == data


def test_bytes_that_do_not_hash_to_the_id_are_never_named(tmp_path):
    cache = BlobCache(str(tmp_path / "c"), 1 << 20)
    oid = blob_id(b"the real content")
    assert cache.fill(oid, 16, [b"something else!!"]) is None
    assert cache.fill(oid, 16, [b"the real"]) is None          # short
    assert os.listdir(tmp_path / "c") == []


def test_a_failing_reader_leaves_nothing_behind(tmp_path):
    cache = BlobCache(str(tmp_path / "c"), 1 << 20)
    data = b"x" * 5000

    def chunks():
        yield data[:100]
        raise RuntimeError("the view could not read the blob")

    try:
        cache.fill(blob_id(data), len(data), chunks())
    except RuntimeError:
        pass
    else:
        raise AssertionError("the reader's error was swallowed")
    assert os.listdir(tmp_path / "c") == []


def test_tampered_or_torn_files_are_removed_not_served(tmp_path):
    cache = BlobCache(str(tmp_path / "c"), 1 << 20)
    data = b"abcdefgh" * 100
    oid = blob_id(data)
    os.close(cache.fill(oid, len(data), [data]))
    path = tmp_path / "c" / oid.hex()
    os.chmod(path, 0o600)
    path.write_bytes(data[:-1] + b"X")                  # same size, one byte off
    assert cache.open_verified(oid, len(data)) is None
    assert not path.exists()
    os.close(cache.fill(oid, len(data), [data]))
    os.chmod(path, 0o600)
    path.write_bytes(data[:10])                         # torn: a write lost in a crash
    assert cache.open_verified(oid, len(data)) is None
    assert not path.exists()


def test_cache_is_bounded_and_counts_what_is_there(tmp_path):
    a, b, c = b"a" * 600, b"b" * 300, b"c" * 300
    cache = BlobCache(str(tmp_path / "c"), 1000)
    os.close(cache.fill(blob_id(a), len(a), [a]))
    os.close(cache.fill(blob_id(b), len(b), [b]))
    assert cache.fill(blob_id(c), len(c), [c]) is None   # 1200 > 1000
    # a new daemon counts the files already there, and drops unfinished writes
    (tmp_path / "c" / ".deadbeef.123.tmp").write_bytes(b"half")
    again = BlobCache(str(tmp_path / "c"), 1000)
    assert again.fill(blob_id(c), len(c), [c]) is None
    assert sorted(os.listdir(tmp_path / "c")) == sorted([blob_id(a).hex(), blob_id(b).hex()])
