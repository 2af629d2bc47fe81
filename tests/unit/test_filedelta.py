"""gitroot.git.filedelta: applying bsdiff's three streams, and refusing
hostile ones (pure: no bsdiff program, no git)."""

import io
import random

import pytest

from gitroot.git.filedelta import (ADD_SLICE, DeltaError, FileDelta, add_bytes, apply_delta,
                                   blob_id, iter_records)


def offt(value: int) -> bytes:
    """bsdiff's 8-byte integer."""
    raw = bytearray(abs(value).to_bytes(8, "little"))
    if value < 0:
        raw[7] |= 0x80
    return bytes(raw)


def control(*triples) -> bytes:
    return b"".join(offt(x) + offt(y) + offt(z) for x, y, z in triples)


def delta(old_new_size: int, triples, diff: bytes, extra: bytes) -> FileDelta:
    return FileDelta("1" * 40, "2" * 40, old_new_size, control(*triples), diff, extra)


def test_blob_id_is_gits():
    assert blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_add_bytes_matches_bytewise_addition():
    rng = random.Random(7)
    cache: dict = {}
    for length in (1, 7, 8, 255, 4096):
        old = bytes(rng.getrandbits(8) for _ in range(length))
        diff = bytes(rng.getrandbits(8) for _ in range(length))
        assert add_bytes(old, diff, cache) == bytes((a + b) & 0xFF for a, b in zip(old, diff))
    assert add_bytes(b"\xff\x80\x7f", b"\x01\x80\x01", cache) == b"\x00\x00\x80"
    assert add_bytes(b"abc", bytes(3), cache) == b"abc"


def test_apply_add_copy_and_seek():
    old = b"0123456789"
    # add 4 from old[0:4] (+1 each), copy "XY", seek back 2, add 3 from old[2:5]
    d = delta(9, [(4, 2, -2), (3, 0, 0)], bytes([1, 1, 1, 1, 0, 0, 0]), b"XY")
    assert apply_delta(old, d) == b"1234XY234"


def test_old_bytes_outside_the_file_read_as_zero():
    d = delta(4, [(0, 0, -2), (4, 0, 0)], b"\x41\x41\x41\x41", b"")
    assert apply_delta(b"\x01\x02", d) == b"\x41\x41\x42\x43"


def test_slices_longer_than_one_add_step():
    rng = random.Random(3)
    size = ADD_SLICE * 2 + 5
    old = rng.randbytes(size)
    diff = bytearray(size)
    diff[ADD_SLICE + 1] = 3
    new = apply_delta(old, delta(size, [(size, 0, 0)], bytes(diff), b""))
    assert len(new) == size and new[ADD_SLICE + 1] == (old[ADD_SLICE + 1] + 3) & 0xFF
    assert new[:ADD_SLICE] == old[:ADD_SLICE]


@pytest.mark.parametrize("size,ctrl,diff,extra,match", [
    (3, b"\0" * 23, b"", b"abc", "whole number"),
    (3, control((-1, 4, 0)), b"", b"abc", "negative"),
    (3, control((0, -3, 0)), b"", b"abc", "negative"),
    (2, control((0, 3, 0)), b"", b"abc", "past the promised size"),
    (4, control((0, 3, 0)), b"", b"abc", "does not match"),
    (3, control((0, 2, 0)), b"", b"abc", "does not match"),
    (3, control((1, 2, 0)), b"", b"abc", "does not match"),
    (3, control((0, 3, 1 << 63 - 1), (0, 0, 1 << 63 - 1)), b"", b"abc", "seeks out of range"),
])
def test_inconsistent_deltas_are_refused(size, ctrl, diff, extra, match):
    with pytest.raises(DeltaError, match=match):
        apply_delta(b"old", FileDelta("1" * 40, "2" * 40, size, ctrl, diff, extra))


def body(*parts: bytes) -> io.BytesIO:
    return io.BytesIO(b"".join(parts))


def test_records_round_trip_and_stop_at_the_pack():
    d = delta(9, [(4, 2, -2), (3, 0, 0)], bytes([1, 1, 1, 1, 0, 0, 0]), b"XY")
    stream = body(d.record(), d.record(), b"PPACK...")
    assert list(iter_records(stream.read)) == [d, d]
    assert stream.read() == b"PACK..."


@pytest.mark.parametrize("data,match", [
    (b"", "ends before its pack"),
    (b"X", "expected a delta record"),
    (b"D" + b"\0" * 10, "truncated"),
    (delta(9, [(9, 0, 0)], bytes(9), b"").record()[:-3], "truncated"),
    (FileDelta("1" * 40, "2" * 40, 1 << 40, b"", b"", b"").record(), "larger than"),
    (FileDelta("1" * 40, "2" * 40, 10, b"", bytes(11), b"").record(), "larger than"),
    (FileDelta("1" * 40, "2" * 40, 10, bytes(24 * 17), b"", b"").record(), "larger than"),
])
def test_hostile_records(data, match):
    with pytest.raises(DeltaError, match=match):
        list(iter_records(body(data).read, max_size=1 << 20))
