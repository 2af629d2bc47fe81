"""The static bundle format shared by publisher and device: bundle headers,
``index.json`` and the choice of a chain of bundles (docs/server.md).

A bundle is a git bundle v2 -- the header ``# v2 git bundle``, the
prerequisite ``-OLD``, the ref ``NEW refs/heads/BRANCH``, a blank line --
followed by a pack, the whole xz-compressed.  A *delta bundle* (format
``delta``) has the same header under the signature ``# gitroot delta bundle
v1``, then per-file deltas (:mod:`gitroot.git.filedelta`), then a pack
without the blobs those deltas rebuild.  ``index.json`` lists git bundles
under ``bundles`` and delta bundles under ``delta-bundles``, a key devices
older than the delta format ignore, and each branch's head.  Everything
parsed here may come from a hostile server: sizes are capped and every
field is checked.

Pure functions and records; no network, no git program.
"""

import json
import lzma
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple, Union

from gitroot.errors import FetchError

BUNDLE_SIGNATURE = b"# v2 git bundle\n"
DELTA_SIGNATURE = b"# gitroot delta bundle v1\n"
BUNDLE_SUFFIX = ".bundle.xz"
DELTA_SUFFIX = ".delta.xz"
GIT_FORMAT = "git"
DELTA_FORMAT = "delta"
SIGNATURES = {GIT_FORMAT: BUNDLE_SIGNATURE, DELTA_FORMAT: DELTA_SIGNATURE}
INDEX_NAME = "index.json"
INDEX_FORMAT = "gitroot-bundles/1"
#: Index key of the delta bundles; the format name stays ``gitroot-bundles/1``
#: so that devices that predate delta bundles still read the index (they
#: ignore keys they do not know, and keep fetching ``bundles``).
DELTA_KEY = "delta-bundles"

MAX_INDEX_BYTES = 4 << 20
MAX_HEADER_BYTES = 1 << 20
CHUNK = 1 << 16

HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")
XZ_MAGIC = b"\xfd7zXZ\x00"


# -- records ---------------------------------------------------------------

@dataclass(frozen=True)
class BundleHeader:
    """What a bundle's header says: prerequisite commits and (ref, commit) pairs."""

    prerequisites: Tuple[str, ...]
    refs: Tuple[Tuple[str, str], ...]
    length: int
    """Bytes of the header, including the blank line; the pack follows."""
    format: str = GIT_FORMAT


@dataclass(frozen=True)
class BundleEntry:
    """One bundle of a static directory, as ``index.json`` lists it."""

    branch: str
    from_commit: Optional[str]
    """The commit the device must already have; None for a full bundle."""
    to_commit: str
    file: str
    size: int
    sha256: str
    unpacked: Optional[int] = None
    """Bytes once decompressed; None in indexes written before gitroot 0.x
    recorded it (the device then bounds decompression by a ratio)."""
    format: str = GIT_FORMAT
    """``git`` (a git bundle) or ``delta`` (a delta bundle)."""

    def to_json(self) -> dict:
        doc = {"branch": self.branch, "from": self.from_commit, "to": self.to_commit,
               "file": self.file, "size": self.size, "sha256": self.sha256}
        if self.unpacked is not None:
            doc["unpacked"] = self.unpacked
        return doc


@dataclass(frozen=True)
class StaticIndex:
    """``index.json``: the bundles, and each branch's newest commit (its head)."""

    heads: Dict[str, str]
    bundles: Tuple[BundleEntry, ...]

    def to_json(self) -> dict:
        doc = {"format": INDEX_FORMAT,
               "heads": dict(sorted(self.heads.items())),
               "bundles": [b.to_json() for b in self.bundles if b.format == GIT_FORMAT]}
        deltas = [b.to_json() for b in self.bundles if b.format == DELTA_FORMAT]
        if deltas:
            doc[DELTA_KEY] = deltas
        return doc


# -- reading bundles -------------------------------------------------------

def bundle_format(data: bytes) -> Optional[str]:
    """``git`` or ``delta`` if *data* starts like that kind of bundle (or could,
    being shorter than the signature); None if it cannot be a bundle."""
    for name, signature in SIGNATURES.items():
        if data[:len(signature)] == signature[:len(data)]:
            return name
    return None


def parse_bundle_header(data: bytes) -> BundleHeader:
    """Parse the start of an (uncompressed) bundle; raise ValueError if malformed.

    Pure.  Accepts the v2 format gitroot writes: prerequisites ``-OID
    [comment]``, refs ``OID REFNAME``, a blank line; and the same header of
    a delta bundle.
    """
    kind = bundle_format(data[:64])
    if kind is None or len(data) < len(SIGNATURES[kind]):
        raise ValueError("not a git bundle (v2) nor a gitroot delta bundle")
    signature = SIGNATURES[kind]
    end = data.find(b"\n\n", len(signature) - 1)
    if end < 0:
        raise ValueError("bundle header has no end")
    prerequisites: List[str] = []
    refs: List[Tuple[str, str]] = []
    for raw in data[len(signature):end].split(b"\n"):
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("bundle header is not ASCII") from None
        if line.startswith("-"):
            oid = line[1:].split(" ", 1)[0]
            if not HEX40.fullmatch(oid):
                raise ValueError(f"bad prerequisite line {line[:80]!r}")
            prerequisites.append(oid)
        else:
            parts = line.split(" ")
            if len(parts) != 2 or not HEX40.fullmatch(parts[0]) or not parts[1]:
                raise ValueError(f"bad ref line {line[:80]!r}")
            refs.append((parts[1], parts[0]))
    if not refs:
        raise ValueError("bundle names no ref")
    return BundleHeader(tuple(prerequisites), tuple(refs), end + 2, kind)


def read_compressed_header(path: str) -> BundleHeader:
    """The header of the xz-compressed bundle at *path* (decompressing only its start)."""
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    data = b""
    with open(path, "rb") as stream:
        while b"\n\n" not in data and len(data) < MAX_HEADER_BYTES:
            if decompressor.needs_input:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
            else:
                chunk = b""
            data += decompressor.decompress(chunk, max_length=CHUNK)
            if decompressor.eof:
                break
    return parse_bundle_header(data)


# -- the index -------------------------------------------------------------

def parse_index(text: Union[str, bytes], source: str = INDEX_NAME) -> StaticIndex:
    """Parse ``index.json``; raise :class:`FetchError` naming *source* if it is bad.

    Pure.  Checks every field, since the index comes from a server.
    """
    def bad(why: str) -> FetchError:
        return FetchError(f"{source}: not a valid bundle index: {why}")

    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad(f"not JSON ({err})") from None
    except RecursionError:
        # 200,000 '[' exhaust the parser's stack: one line, like any bad index
        raise bad("nested too deeply") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format") != INDEX_FORMAT:
        raise bad(f"format is {doc.get('format')!r}, expected {INDEX_FORMAT!r}")
    heads = doc.get("heads")
    bundles = doc.get("bundles")
    deltas = doc.get(DELTA_KEY, [])
    if not isinstance(heads, dict) or not isinstance(bundles, list) \
            or not isinstance(deltas, list):
        raise bad(f"'heads' must be an object, 'bundles' and '{DELTA_KEY}' lists")
    for branch, commit in heads.items():
        if not isinstance(commit, str) or not HEX40.fullmatch(commit):
            raise bad(f"head of {branch!r} is not a commit id")
    entries = []
    listed = [(GIT_FORMAT, number, item) for number, item in enumerate(bundles, 1)] + \
        [(DELTA_FORMAT, number, item) for number, item in enumerate(deltas, 1)]
    for kind, number, item in listed:
        if kind == DELTA_FORMAT:
            number = f"{number} of {DELTA_KEY}"
        if not isinstance(item, dict):
            raise bad(f"bundle {number} is not an object")
        branch, start, end = item.get("branch"), item.get("from"), item.get("to")
        name, size, sha = item.get("file"), item.get("size"), item.get("sha256")
        unpacked = item.get("unpacked")
        if not isinstance(branch, str) or not branch:
            raise bad(f"bundle {number}: 'branch' must be a name")
        if start is not None and not (isinstance(start, str) and HEX40.fullmatch(start)):
            raise bad(f"bundle {number}: 'from' must be a commit id or null")
        if not (isinstance(end, str) and HEX40.fullmatch(end)):
            raise bad(f"bundle {number}: 'to' must be a commit id")
        if not (isinstance(name, str) and FILE_NAME.fullmatch(name)):
            raise bad(f"bundle {number}: 'file' must be a plain file name")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise bad(f"bundle {number}: 'size' must be a positive integer")
        if not (isinstance(sha, str) and HEX64.fullmatch(sha)):
            raise bad(f"bundle {number}: 'sha256' must be 64 hex digits")
        if unpacked is None and kind == DELTA_FORMAT:
            raise bad(f"bundle {number}: a delta bundle must give 'unpacked'")
        if unpacked is not None and (not isinstance(unpacked, int)
                                     or isinstance(unpacked, bool) or unpacked <= 0):
            raise bad(f"bundle {number}: 'unpacked' must be a positive integer")
        if kind == DELTA_FORMAT and start is None:
            raise bad(f"bundle {number}: a delta bundle needs a 'from' commit")
        entries.append(BundleEntry(branch, start, end, name, size, sha, unpacked, kind))
    return StaticIndex(dict(heads), tuple(entries))


# -- choosing a chain ------------------------------------------------------

def choose_chain(index: StaticIndex, branch: str, have: Iterable[str]) -> List[BundleEntry]:
    """The cheapest (fewest bytes, then fewest files) bundles from *have* to the head.

    Starts from any commit in *have*, or from nothing with a full bundle.
    Returns [] if the head is in *have*.  Pure; raises FetchError if the
    branch is unknown or no chain reaches its head.
    """
    head = index.heads.get(branch)
    if head is None:
        raise FetchError(f"the bundle index has no branch {branch!r} "
                         f"(it has: {', '.join(sorted(index.heads)) or 'none'})")
    starts = set(have)
    if head in starts:
        return []
    # Dijkstra over commits; the start node None stands for "nothing".
    best: Dict[Optional[str], Tuple[int, int]] = {c: (0, 0) for c in starts}
    best[None] = (0, 0)
    via: Dict[str, BundleEntry] = {}
    done: set = set()
    edges = [b for b in index.bundles if b.branch == branch]
    while True:
        frontier = [(cost, node) for node, cost in best.items() if node not in done]
        if not frontier:
            break
        cost, node = min(frontier, key=lambda item: item[0])
        done.add(node)
        if node == head:
            break
        for bundle in edges:
            if bundle.from_commit != node or bundle.to_commit in done:
                continue
            candidate = (cost[0] + bundle.size, cost[1] + 1)
            if bundle.to_commit not in best or candidate < best[bundle.to_commit]:
                best[bundle.to_commit] = candidate
                via[bundle.to_commit] = bundle
    if head not in via:
        raise FetchError(f"no bundle chain leads {branch} from a commit this device has "
                         f"to {head[:12]}, and there is no full bundle")
    chain = []
    node: Optional[str] = head
    while node in via:
        bundle = via[node]
        chain.append(bundle)
        node = bundle.from_commit
        if node in starts:
            break
    chain.reverse()
    return chain
