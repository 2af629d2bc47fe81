"""Per-file deltas of the delta bundle format: bsdiff's three streams, raw.

A file changed at the same path between two releases travels as a bsdiff
delta (Colin Percival's algorithm, the ``BSDIFF40`` format of Debian's
``bsdiff`` package) against its old blob.  A ``BSDIFF40`` file holds three
bzip2 streams: *control* (triples ``x y z``), *diff* (bytes added to the
old file, mostly zeros) and *extra* (new bytes).  The delta bundle carries
the three streams *uncompressed*, so that the bundle's one xz stream
compresses them together with everything else (about 10 % smaller than
bsdiff's own bzip2 on Debian's executables; docs/performance.md).

:func:`apply_delta` rebuilds a file from its old version and a
:class:`FileDelta`.  Every field may come from a hostile server: lengths
are checked against each other and against the promised size before any
byte is produced, and memory is bounded by that size (which the caller
caps).  The caller must still check that the result hashes to the object
id the signed commit names: a delta is only a way of spelling content.

Pure functions and records; no git, no files.
"""

import bz2
import hashlib
import struct
from dataclasses import dataclass
from typing import Iterator, List, Tuple

BSDIFF_MAGIC = b"BSDIFF40"
#: One delta record on the wire: ``D``, target id, base id (20 bytes each),
#: then new size and the lengths of the control, diff and extra streams.
RECORD_TAG = b"D"
PACK_TAG = b"P"
RECORD_HEAD = struct.Struct(">20s20sQQQQ")
#: Largest file (old or new) that travels as a delta: bsdiff needs about 17x
#: the old file's size in memory on the publisher, and the device holds the
#: old file, the new one and the delta in memory at once.
MAX_DELTA_FILE = 64 << 20
def max_control(size: int) -> int:
    """The longest control stream a delta rebuilding *size* bytes may have:
    one triple per 16 bytes rebuilt (bsdiff writes one per matched region,
    in practice one per few hundred bytes), so that a hostile record cannot
    make the device hold 24 bytes of control for every byte it rebuilds."""
    return 24 * (size // 16 + 16)


#: The add step works on slices of this many bytes, so its temporary
#: integers stay small whatever the file size.
ADD_SLICE = 1 << 20


class DeltaError(ValueError):
    """A delta that is malformed or does not fit the file it claims to rebuild."""


@dataclass(frozen=True)
class FileDelta:
    """One file's delta: rebuild blob *target* (``size`` bytes) from blob *base*."""

    target: str
    base: str
    size: int
    control: bytes
    diff: bytes
    extra: bytes

    def record(self) -> bytes:
        """The bytes of this delta inside a delta bundle."""
        return (RECORD_TAG
                + RECORD_HEAD.pack(bytes.fromhex(self.target), bytes.fromhex(self.base),
                                   self.size, len(self.control), len(self.diff),
                                   len(self.extra))
                + self.control + self.diff + self.extra)


def blob_id(data: bytes) -> str:
    """The git (SHA-1) object id of a blob holding *data*."""
    digest = hashlib.sha1(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


# -- bsdiff's own file -----------------------------------------------------

def _offtin(raw: bytes) -> int:
    """bsdiff's 8-byte integer: little-endian magnitude, sign in the top bit."""
    value = int.from_bytes(raw[:7] + bytes([raw[7] & 0x7F]), "little")
    return -value if raw[7] & 0x80 else value


def from_bsdiff(patch: bytes, target: str, base: str) -> FileDelta:
    """The three streams of a ``BSDIFF40`` file (as ``bsdiff OLD NEW PATCH`` writes)."""
    if len(patch) < 32 or not patch.startswith(BSDIFF_MAGIC):
        raise DeltaError("not a BSDIFF40 file")
    control_len, diff_len, size = (_offtin(patch[8:16]), _offtin(patch[16:24]),
                                   _offtin(patch[24:32]))
    if min(control_len, diff_len, size) < 0 or 32 + control_len + diff_len > len(patch):
        raise DeltaError("BSDIFF40 header lengths do not fit the file")
    control = bz2.decompress(patch[32:32 + control_len])
    diff = bz2.decompress(patch[32 + control_len:32 + control_len + diff_len])
    extra = bz2.decompress(patch[32 + control_len + diff_len:])
    return FileDelta(target, base, size, control, diff, extra)


# -- applying --------------------------------------------------------------

def control_triples(delta: FileDelta) -> List[Tuple[int, int, int]]:
    """The control stream as (add, copy, seek) triples, checked against the
    stream lengths and the promised size; raises :class:`DeltaError`."""
    control = delta.control
    if len(control) % 24:
        raise DeltaError("control stream is not a whole number of triples")
    triples = []
    added = copied = 0
    for offset in range(0, len(control), 24):
        add, copy, seek = (_offtin(control[offset:offset + 8]),
                           _offtin(control[offset + 8:offset + 16]),
                           _offtin(control[offset + 16:offset + 24]))
        if add < 0 or copy < 0:
            raise DeltaError("negative length in the control stream")
        added += add
        copied += copy
        if added + copied > delta.size:
            raise DeltaError("control stream writes past the promised size")
        triples.append((add, copy, seek))
    if added != len(delta.diff) or copied != len(delta.extra) or \
            added + copied != delta.size:
        raise DeltaError("control stream does not match the diff and extra streams")
    return triples


def _masks(length: int, cache: dict) -> Tuple[int, int]:
    masks = cache.get(length)
    if masks is None:
        masks = cache[length] = (int.from_bytes(b"\x7f" * length, "little"),
                                 int.from_bytes(b"\x80" * length, "little"))
    return masks


def add_bytes(old: bytes, diff: bytes, cache: dict) -> bytes:
    """Bytewise ``(old + diff) mod 256``.

    Without numpy, a loop over bytes costs about a second per MB; instead each
    slice becomes one integer and the low seven bits of every byte are added
    at once (their sums never carry into the next byte), then each top bit is
    fixed with XOR.  A slice of zeros (most of a diff) is copied as is.
    """
    if not diff.strip(b"\0"):
        return old
    low, high = _masks(len(old), cache)
    a = int.from_bytes(old, "little")
    b = int.from_bytes(diff, "little")
    return (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(len(old), "little")


def _old_window(old: bytes, start: int, length: int) -> bytes:
    """``old[start:start+length]`` where bytes outside *old* read as zero (bspatch)."""
    if 0 <= start and start + length <= len(old):
        return old[start:start + length]
    lead = min(max(-start, 0), length)
    inside = old[max(start, 0):max(start + length, 0)]
    return bytes(lead) + inside + bytes(length - lead - len(inside))


def apply_delta(old: bytes, delta: FileDelta) -> bytes:
    """Rebuild the new file from *old* and *delta* (what ``bspatch`` does).

    Raises :class:`DeltaError` if the delta is inconsistent; the result has
    exactly ``delta.size`` bytes.  Its object id is the caller's to check.
    """
    out = bytearray()
    cache: dict = {}
    old_pos = diff_pos = extra_pos = 0
    for add, copy, seek in control_triples(delta):
        for done in range(0, add, ADD_SLICE):
            step = min(ADD_SLICE, add - done)
            out += add_bytes(_old_window(old, old_pos + done, step),
                             delta.diff[diff_pos + done:diff_pos + done + step], cache)
        old_pos += add
        diff_pos += add
        out += delta.extra[extra_pos:extra_pos + copy]
        extra_pos += copy
        old_pos += seek
        if abs(old_pos) > (1 << 62):
            raise DeltaError("control stream seeks out of range")
    return bytes(out)


def iter_records(read, max_size: int = MAX_DELTA_FILE) -> Iterator[FileDelta]:
    """The delta records at the front of a delta bundle's body.

    *read(n)* returns the next *n* bytes of the body.  Yields each
    :class:`FileDelta` and stops at the ``P`` tag that starts the pack (the
    caller reads the pack on).  Raises :class:`DeltaError` on a malformed
    record, a record over *max_size*, or a body that ends early.
    """
    while True:
        tag = read(1)
        if tag == PACK_TAG:
            return
        if tag != RECORD_TAG:
            raise DeltaError("expected a delta record or the pack" if tag else
                             "the bundle ends before its pack")
        head = read(RECORD_HEAD.size)
        if len(head) != RECORD_HEAD.size:
            raise DeltaError("truncated delta record")
        target, base, size, control_len, diff_len, extra_len = RECORD_HEAD.unpack(head)
        if size > max_size or control_len > max_control(size) or diff_len > size \
                or extra_len > size:
            raise DeltaError(f"delta record for {target.hex()[:12]} is larger than the "
                             f"{max_size} bytes a delta may rebuild")
        streams = [read(n) for n in (control_len, diff_len, extra_len)]
        if [len(s) for s in streams] != [control_len, diff_len, extra_len]:
            raise DeltaError("truncated delta record")
        yield FileDelta(target.hex(), base.hex(), size, *streams)
