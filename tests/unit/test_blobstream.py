"""Large blobs in bounded memory: real repositories made by git, read back
in ranges from loose objects, whole pack entries and deltas."""

import hashlib
import os
import random
import subprocess
import zlib

import pytest

from gitroot.git import blobstream
from gitroot.git.blobstream import BlobStreamError, ObjectFiles, StreamedBlob


def _git(repo, *args, **kwargs):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True,
                          **kwargs).stdout


def _content(size, seed):
    """Compressible but not trivial bytes."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij ") for _ in range(rng.randint(3, 12)))
             for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


@pytest.fixture
def small_checkpoints(monkeypatch):
    monkeypatch.setattr(blobstream, "CHECKPOINT_MIN", 64 << 10)
    monkeypatch.setattr(blobstream, "CHUNK", 16 << 10)


def _store(tmp_path, data):
    repo = str(tmp_path / "r.git")
    subprocess.run(["git", "init", "-q", "--bare", repo], check=True)
    oid = _git(repo, "hash-object", "-w", "--stdin", input=data).strip().decode()
    return repo, bytes.fromhex(oid)


def _pack(repo, *oids, window=0):
    """Pack *oids* (unreachable, so repack would leave them loose) and drop
    their loose copies."""
    _git(repo, "pack-objects", "-q", f"--window={window}", "objects/pack/pack",
         input=b"".join(o.hex().encode() + b"\n" for o in oids))
    _git(repo, "prune-packed")


def _check_ranges(stream, data):
    rng = random.Random(7)
    ranges = [(0, 4096), (len(data) - 100, 4096), (len(data), 10)]
    ranges += [(rng.randrange(len(data)), rng.randrange(1, 300_000)) for _ in range(40)]
    for offset, size in ranges:
        assert stream.read(offset, size) == data[offset:offset + size], (offset, size)
    # a sequential reader, as the kernel's read-ahead
    assert b"".join(stream.read(o, 131072) for o in range(0, len(data), 131072)) == data


def test_loose_and_packed_blob_ranges(tmp_path, small_checkpoints):
    data = _content(1_500_000, 1)
    repo, oid = _store(tmp_path, data)
    files = ObjectFiles(repo)
    where = files.locate(oid)
    assert where.loose and not where.delta and where.size == len(data)
    stream = StreamedBlob(oid, where)
    stream.verify()
    assert 2 <= len(stream._checkpoints) <= blobstream.MAX_CHECKPOINTS + 1
    _check_ranges(stream, data)
    _pack(repo, oid)                     # now in a pack, stored whole
    where = ObjectFiles(repo).locate(oid)
    assert not where.loose and not where.delta and where.size == len(data)
    _check_ranges(StreamedBlob(oid, where), data)


def test_checkpoints_pin_little_input(tmp_path):
    """Each checkpoint (an inflater copy) keeps the input its inflater had
    not consumed: fed whole 256 KiB chunks, dense checkpoints made the
    daemon's memory after a full read of the Debian root 40 MB instead of
    29 MB.  Fed FEED bytes at a time, a checkpoint keeps at most that."""
    data = _content(3_000_000, 4)
    repo, oid = _store(tmp_path, data)
    _pack(repo, oid)
    stream = StreamedBlob(oid, ObjectFiles(repo).locate(oid))
    stream.verify()
    assert len(stream._checkpoints) >= 8
    # (fed whole chunks, the largest was 257,199 bytes here)
    assert max(len(inflater.unconsumed_tail)
               for _, inflater, _ in stream._checkpoints.values()) <= 16 << 10
    _check_ranges(stream, data)


def test_delta_is_located_with_the_size_it_produces(tmp_path):
    base = _content(300_000, 2)
    changed = base[:1000] + b"CHANGED" + base[1000:]
    repo, oid_base = _store(tmp_path, base)
    oid = bytes.fromhex(_git(repo, "hash-object", "-w", "--stdin", input=changed)
                        .strip().decode())
    _pack(repo, oid, oid_base, window=10)
    kinds = {ObjectFiles(repo).locate(o).delta for o in (oid, oid_base)}
    assert kinds == {True, False}
    for o, d in ((oid, changed), (oid_base, base)):
        assert ObjectFiles(repo).locate(o).size == len(d)
    delta = [o for o in (oid, oid_base) if ObjectFiles(repo).locate(o).delta][0]
    with pytest.raises(ValueError):
        StreamedBlob(delta, ObjectFiles(repo).locate(delta))


def test_content_that_does_not_hash_to_its_id_is_refused(tmp_path, small_checkpoints):
    data = _content(400_000, 3)
    repo, oid = _store(tmp_path, data)
    where = ObjectFiles(repo).locate(oid)
    evil = data[:-1] + b"X"
    with open(where.path, "wb") as f:      # same size, other bytes
        f.write(zlib.compress(b"blob %d\0" % len(evil) + evil))
    stream = StreamedBlob(oid, ObjectFiles(repo).locate(oid))
    with pytest.raises(BlobStreamError, match="does not hash"):
        stream.read(0, 10)


def test_truncated_stream_is_refused(tmp_path):
    data = _content(400_000, 4)
    repo, oid = _store(tmp_path, data)
    where = ObjectFiles(repo).locate(oid)
    with open(where.path, "rb") as f:
        raw = f.read()
    os.chmod(where.path, 0o644)
    with open(where.path, "wb") as f:
        f.write(raw[:len(raw) // 2])
    with pytest.raises(BlobStreamError):
        StreamedBlob(oid, ObjectFiles(repo).locate(oid)).verify()


def test_unknown_object_is_not_located(tmp_path):
    repo, _ = _store(tmp_path, b"x")
    assert ObjectFiles(repo).locate(hashlib.sha1(b"nothing").digest()) is None
