"""Large blobs read in bounded memory: found in the repository's own files
(a loose object or a pack entry stored whole) and inflated as a stream.

libgit2 reads an object whole into memory, so a 1 GiB file cost the FUSE
daemon 2 GiB at its peak.  For an object stored whole (not as a delta),
:func:`locate` finds where its zlib stream starts, and :class:`StreamedBlob`
serves any byte range of it while holding a bounded amount of memory:

- :meth:`StreamedBlob.verify` inflates the whole stream once, hashing it
  (a blob is served only if its bytes hash to its id, as libgit2's strict
  verification guarantees for the rest), and keeps *checkpoints*: copies of
  the inflater at most :data:`MAX_CHECKPOINTS` places, each about 40 KiB.
- :meth:`StreamedBlob.read` resumes from the nearest checkpoint before the
  offset, or from where the last read ended (a sequential reader never
  inflates anything twice).

An object stored as a delta cannot be inflated from the middle; the caller
reads it whole (:func:`locate` says so, and gives the size the delta
produces, so the caller can refuse one beyond its cap before inflating).

Only SHA-1 repositories, pack index v2, and objects in this repository's
own object directory (no alternates) are located; anything else is
``None``, and the caller falls back to libgit2.

Threading: a StreamedBlob is for one thread (the FUSE daemon has one).
Pure functions otherwise.
"""

import bisect
import hashlib
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

OBJ_BLOB = 3
OBJ_OFS_DELTA = 6
OBJ_REF_DELTA = 7

#: At most this many inflater copies are kept per blob (about 40 KiB each),
#: however large the blob: they are spread evenly, at least CHECKPOINT_MIN apart.
#: A read out of order inflates from the checkpoint before it, so their
#: distance is what a random read costs: a program's executable is read
#: where its pages fault.  At 8 MiB apart, the cold start of python3 from
#: the Debian root spent most of its time re-inflating its 6.6 MB binary
#: from the start (zlib took 0.67 of the daemon's 0.98 s under cProfile);
#: 256 KiB apart, a random read inflates at most 256 KiB more than it asks
#: for (docs/performance.md, "The low-level back end").
MAX_CHECKPOINTS = 64
CHECKPOINT_MIN = 256 << 10
CHUNK = 256 << 10              # compressed bytes read at a time
FEED = 16 << 10                # compressed bytes given the inflater at a time (verify)


class BlobStreamError(Exception):
    """The object's stored form is broken, or its bytes do not hash to its id."""


@dataclass(frozen=True)
class Location:
    """Where an object's zlib stream starts."""

    path: str                  # the loose object or pack file
    offset: int                # first byte of the zlib stream
    size: int                  # the object's size (for a delta: what it produces)
    delta: bool                # stored as a delta: cannot be streamed
    loose: bool                # a loose object: the stream starts with "blob SIZE\0"


class _PackIndex:
    """A pack's .idx (v2), mapped; finds an object's offset in the pack."""

    def __init__(self, idx_path: str):
        with open(idx_path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        m = self.map
        if len(m) < 8 + 1024 or m[:8] != b"\xfftOc\x00\x00\x00\x02":
            raise BlobStreamError(f"{idx_path}: not a version 2 pack index")
        self.fanout = struct.unpack(">256I", m[8:8 + 1024])
        self.count = self.fanout[255]
        self.names = 8 + 1024
        self.offsets = self.names + 24 * self.count        # after names and CRCs
        self.large = self.offsets + 4 * self.count
        if len(m) < self.large + 40:
            raise BlobStreamError(f"{idx_path}: truncated pack index")

    def offset_of(self, oid: bytes) -> Optional[int]:
        m = self.map
        lo = self.fanout[oid[0] - 1] if oid[0] else 0
        hi = self.fanout[oid[0]]
        while lo < hi:
            mid = (lo + hi) // 2
            name = m[self.names + 20 * mid:self.names + 20 * mid + 20]
            if name < oid:
                lo = mid + 1
            elif name > oid:
                hi = mid
            else:
                (off,) = struct.unpack(">I", m[self.offsets + 4 * mid:self.offsets + 4 * mid + 4])
                if off & 0x80000000:
                    at = self.large + 8 * (off & 0x7FFFFFFF)
                    (off,) = struct.unpack(">Q", m[at:at + 8])
                return off
        return None


class ObjectFiles:
    """Locates objects in one repository's object directory."""

    def __init__(self, git_dir: str):
        self.objects = os.path.join(git_dir, "objects")
        self._packs: Optional[List[Tuple[str, _PackIndex, mmap.mmap]]] = None

    def _pack_indexes(self) -> List[Tuple[str, _PackIndex, mmap.mmap]]:
        if self._packs is None:
            packs = []
            pack_dir = os.path.join(self.objects, "pack")
            try:
                names = sorted(os.listdir(pack_dir))
            except OSError:
                names = []
            for name in names:
                if name.endswith(".idx") and name[:-4] + ".pack" in names:
                    pack_path = os.path.join(pack_dir, name[:-4] + ".pack")
                    try:
                        index = _PackIndex(os.path.join(pack_dir, name))
                        # mapped, as the index: locating an object is then
                        # no system call (an open and a read per file read
                        # cost the daemon 0.09 s of a cold full read,
                        # under cProfile)
                        with open(pack_path, "rb") as f:
                            pack_map = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                        # a fault reads its page, not the device's read-ahead
                        # around it (8 MiB here: 15 MB more read from disk
                        # in a cold program start)
                        pack_map.madvise(mmap.MADV_RANDOM)
                    except (OSError, ValueError, BlobStreamError):
                        continue     # libgit2 will judge that pack
                    packs.append((pack_path, index, pack_map))
            self._packs = packs
        return self._packs

    def locate(self, oid: bytes) -> Optional[Location]:
        """Where *oid* is stored, or None (not here, or not in a form read here)."""
        for pack_path, index, pack_map in self._pack_indexes():
            offset = index.offset_of(oid)
            if offset is not None:
                try:
                    return _pack_entry(pack_path, pack_map, offset)
                except (OSError, BlobStreamError, zlib.error):
                    return None
        hexid = oid.hex()
        path = os.path.join(self.objects, hexid[:2], hexid[2:])
        try:
            with open(path, "rb") as f:
                head = zlib.decompressobj().decompress(f.read(64), 64)
        except (OSError, zlib.error):
            return None
        kind, _, rest = head.partition(b" ")
        size_text, nul, _ = rest.partition(b"\0")
        if kind != b"blob" or not nul or not size_text.isdigit():
            return None
        return Location(path, 0, int(size_text), delta=False, loose=True)


def _varint_size(data: bytes, pos: int) -> Tuple[int, int]:
    """A delta header's size (little-endian base-128); (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise BlobStreamError("truncated delta header")
        c = data[pos]
        value |= (c & 0x7F) << shift
        pos += 1
        shift += 7
        if not c & 0x80:
            return value, pos


def _pack_entry(pack_path: str, pack: mmap.mmap, offset: int) -> Location:
    head = pack[offset:offset + 32]
    if not head:
        raise BlobStreamError("offset beyond the pack")
    c = head[0]
    kind = (c >> 4) & 7
    size = c & 15
    shift = 4
    pos = 1
    while c & 0x80:
        if pos >= len(head) or shift > 63:
            raise BlobStreamError("bad pack entry header")
        c = head[pos]
        size |= (c & 0x7F) << shift
        shift += 7
        pos += 1
    if kind == OBJ_OFS_DELTA:
        while pos < len(head) and head[pos] & 0x80:     # the base's negative offset
            pos += 1
        pos += 1
    elif kind == OBJ_REF_DELTA:
        pos += 20
    start = offset + pos
    if kind in (OBJ_OFS_DELTA, OBJ_REF_DELTA):
        # the delta's header: the base's size, then the size it produces
        delta_head = zlib.decompressobj().decompress(pack[start:start + 64], 32)
        _, at = _varint_size(delta_head, 0)
        result, _ = _varint_size(delta_head, at)
        return Location(pack_path, start, result, delta=True, loose=False)
    if kind != OBJ_BLOB:
        raise BlobStreamError(f"pack entry of type {kind}, not a blob")
    return Location(pack_path, start, size, delta=False, loose=False)


class StreamedBlob:
    """Byte ranges of one blob stored whole, in bounded memory (see module)."""

    def __init__(self, oid: bytes, where: Location):
        if where.delta:
            raise ValueError("a delta cannot be streamed")
        self.oid = oid
        self.where = where
        self.size = where.size
        self.step = max(CHECKPOINT_MIN, -(-self.size // MAX_CHECKPOINTS))
        # output offset -> (compressed offset, inflater copy, pending input)
        self._checkpoints: Dict[int, Tuple[int, "zlib._Decompress", bytes]] = {}
        self._marks: List[int] = []
        self._cursor: Optional[list] = None     # [output offset, file offset, inflater, pending]
        self.verified = False

    def _start(self):
        """(file offset to read on from, inflater, input not yet inflated)
        at the first byte of content."""
        inflater = zlib.decompressobj()
        pending = b""
        if not self.where.loose:
            return self.where.offset, inflater, pending
        # a loose object's stream starts with its "blob SIZE\0" header
        with open(self.where.path, "rb") as f:
            header = b""
            pos = 0
            while b"\0" not in header:
                if len(header) > 32:
                    raise BlobStreamError("bad loose object header")
                if not pending:
                    pending = f.read(64)
                    pos += len(pending)
                    if not pending:
                        raise BlobStreamError("bad loose object header")
                # one byte at a time: the header must end exactly at the NUL
                header += inflater.decompress(pending, 1)
                pending = inflater.unconsumed_tail
        return pos, inflater, pending

    def verify(self) -> None:
        """Inflate the whole stream once: hash it, count it, keep checkpoints."""
        sha = hashlib.sha1(b"blob %d\0" % self.size)
        offset, inflater, pending = self._start()
        # compressed input: the chunk read last, where it starts in the
        # file, and how much of it the inflater has consumed
        chunk = memoryview(pending)
        chunk_start = offset - len(pending)
        pos = 0
        out = 0
        next_mark = 0
        with open(self.where.path, "rb") as f:
            f.seek(offset)
            while True:
                if out >= next_mark and out < self.size:
                    self._checkpoints[out] = (chunk_start + pos, inflater.copy(), b"")
                    self._marks.append(out)
                    next_mark = out + self.step
                if pos >= len(chunk):
                    chunk_start += len(chunk)
                    chunk = memoryview(f.read(CHUNK))
                    pos = 0
                    if not chunk:
                        break
                want = min(CHUNK, max(next_mark - out, 1)) if out < self.size else CHUNK
                # At most FEED bytes at a time: an inflater keeps what it
                # did not consume as a bytes object, and so does each copy
                # kept as a checkpoint (fed whole chunks, 64 checkpoints
                # pinned up to 16 MiB of input)
                feed = chunk[pos:pos + FEED]
                try:
                    data = inflater.decompress(feed, want)
                except zlib.error as err:
                    raise BlobStreamError(f"corrupt zlib stream: {err}") from None
                pos += len(feed) - len(inflater.unconsumed_tail)
                out += len(data)
                sha.update(data)
                if inflater.eof:
                    break
        if out != self.size or not inflater.eof:
            raise BlobStreamError(f"the stream holds {out} bytes, its header says {self.size}")
        if sha.digest() != self.oid:
            raise BlobStreamError(f"content does not hash to {self.oid.hex()}")
        self.verified = True

    def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) (after :meth:`verify`)."""
        if not self.verified:
            self.verify()
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        cursor = self._cursor
        if cursor is None or not cursor[0] <= offset < cursor[0] + self.step:
            mark = self._marks[bisect.bisect_right(self._marks, offset) - 1]
            file_offset, inflater, pending = self._checkpoints[mark]
            cursor = [mark, file_offset, inflater.copy(), pending]
        out_pos, file_offset, inflater, pending = cursor
        pieces = []
        with open(self.where.path, "rb") as f:
            f.seek(file_offset)
            while out_pos < end:
                if inflater.eof:
                    raise BlobStreamError("stream ended early")
                if not pending:
                    pending = f.read(CHUNK)
                    file_offset += len(pending)
                    if not pending:
                        raise BlobStreamError("stream ended early")
                data = inflater.decompress(pending, min(CHUNK, end - out_pos))
                pending = inflater.unconsumed_tail
                if out_pos + len(data) > offset:
                    pieces.append(data[max(0, offset - out_pos):])
                out_pos += len(data)
        self._cursor = [out_pos, file_offset, inflater, pending]
        return b"".join(pieces)[:end - offset]
