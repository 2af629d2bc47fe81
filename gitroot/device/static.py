"""Fetching from a static directory of bundles (docs/server.md).

:func:`fetch_static`, called by :mod:`gitroot.device.fetch`: read the index,
choose the cheapest chain of bundles from a commit the device has to the
branch's head, download each with resume (HTTP Range into a ``.part`` file;
size and SHA-256 checked at the end), decompress, check the header, and
``git fetch`` it into ``refs/gitroot/incoming/BRANCH`` -- the only ref this
module ever moves -- then rewrite the received packs zlib-compressed.
Signature checks and pins are the fetcher's job.

A delta bundle (docs/server.md) is first turned back into a git bundle:
each per-file delta is applied to its old blob, and the result must hash
to the blob id the delta names -- the id the signed commit's trees name --
before it joins the pack; the rebuilt bundle then goes through ``git
fetch`` like any other, so a delta never bypasses git's checks.

Everything from the server is hostile: the index is size-capped and every
field checked (:mod:`gitroot.git.bundle`); a file name is a plain name in
the same directory; a download may not exceed the size the index gives;
decompressed output is capped by the size the index declares (plus a
small margin) and the header is checked as soon as its first bytes
decompress, so a decompression bomb costs at most that much disk; the
bundle's header must name exactly the commits the index promised, and its
base must be on the device before anything is unpacked; git checks every
object (``fetch.fsckObjects``).

Threading: no shared state.  Each call owns its files; the fetch lock keeps
two fetches from sharing a download directory.
"""

import hashlib
import logging
import lzma
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Callable, List, Optional, Sequence, Union
from urllib.parse import quote, urljoin, urlsplit

from gitroot.device.deadline import Deadline, enforced
from gitroot.errors import FetchError
from gitroot.git.bundle import (BUNDLE_SIGNATURE, BUNDLE_SUFFIX, CHUNK, DELTA_FORMAT, HEX40,
                                INDEX_NAME, MAX_HEADER_BYTES, MAX_INDEX_BYTES, XZ_MAGIC,
                                BundleEntry, BundleHeader, bundle_format, choose_chain,
                                parse_bundle_header, parse_index)
from gitroot.git.filedelta import DeltaError, apply_delta, blob_id, iter_records
from gitroot.git.command import failure_summary, run_git
from gitroot.git.refs import branch_name_problem

if TYPE_CHECKING:  # imported at run time only where used
    import pygit2
    import requests

log = logging.getLogger(__name__)

INCOMING = "refs/gitroot/incoming/"
MAX_BUNDLE_BYTES = 16 << 30
MAX_UNPACKED_BYTES = 64 << 30
INDEX_SECONDS = 120.0
#: How far decompression may run past the unpacked size the index declares.
UNPACKED_MARGIN = 1 << 20
#: An index written before gitroot recorded unpacked sizes bounds a bundle
#: by this ratio to its compressed size instead.  Real bundles stay under 10
#: (docs/performance.md); only a release of mostly zeros would reach it, and
#: republishing the index (``gitroot bundle --index DIR``) lifts it.
LEGACY_RATIO = 1000


@dataclass(frozen=True)
class FetchProgress:
    """One progress report of :func:`fetch_static`."""

    phase: str          # "index" | "download" | "unpack" | "fetch" | "done"
    bundle: int         # 1-based position in the chain (0 for the index)
    bundles: int        # length of the chain
    file: str
    done: int           # bytes so far in this phase of this bundle
    total: int


ProgressCallback = Callable[[FetchProgress], None]


# -- fetching --------------------------------------------------------------

def fetch_static(base_url: str, repo: Union["pygit2.Repository", str, "os.PathLike[str]"],
                 branch: str,
                 have: Sequence[str], workdir: str,
                 progress: Optional[ProgressCallback] = None, *,
                 timeout: float = 30.0,
                 deadline: Optional[Deadline] = None,
                 session: Optional["requests.Session"] = None,
                 max_index_bytes: int = MAX_INDEX_BYTES,
                 max_bundle_bytes: int = MAX_BUNDLE_BYTES,
                 max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> str:
    """Bring *branch*'s newest release from a static directory into *repo*.

    *base_url* is the directory (``https://host/path/``) or its
    ``index.json``.  *have* lists commits the device already holds (the
    cheapest bundle chain starts from one of them; those missing from the
    repository are ignored).  Downloads go to *workdir* as
    ``SHA256.bundle.xz.part`` and resume where an interrupted call stopped;
    they are deleted once fetched.  The index must arrive within
    :data:`INDEX_SECONDS` and before *deadline* (the whole fetch's, which the
    caller enforces around this call), whatever pace the server keeps.

    Returns the head commit id, which ``refs/gitroot/incoming/BRANCH`` then
    names.  No other ref changes, ever; on any error that ref is left as it
    was.  Raises :class:`FetchError` (network, server, bad index, a
    download of the wrong size or checksum, a bundle that is not what the
    index says, git refusing it).
    """
    import requests

    repo_path = os.fspath(repo) if isinstance(repo, (str, os.PathLike)) else repo.path
    repo_path = repo_path.rstrip("/") or "/"
    index_url = _index_url(base_url, branch)
    os.makedirs(workdir, exist_ok=True)
    ref = INCOMING + branch

    own_session = session is None
    http = session if session is not None else requests.Session()
    if own_session:
        from gitroot import __version__
        http.headers["User-Agent"] = f"gitroot/{__version__}"
    try:
        _report(progress, "index", 0, 0, INDEX_NAME, 0, 0)
        # The index is small: a server still sending it after INDEX_SECONDS
        # is stalling (1 byte every 2 s would take weeks for 4 MiB).
        overall = deadline if deadline is not None else Deadline(INDEX_SECONDS, index_url)
        with enforced(overall.within(INDEX_SECONDS, index_url), FetchError):
            raw_index = _download_small(http, index_url, max_index_bytes, timeout)
        index = parse_index(raw_index, index_url)
        chain = _chain_from(index, repo_path, branch, have, max_bundle_bytes)
        if not chain:
            _set_ref(repo_path, ref, index.heads[branch])
            _report(progress, "done", 0, 0, "", 0, 0)
            return index.heads[branch]
        files = [_download_bundle(http, urljoin(index_url, quote(bundle.file)), bundle,
                                  workdir, timeout,
                                  lambda done, total, n=number, f=bundle.file:
                                  _report(progress, "download", n, len(chain), f, done, total))
                 for number, bundle in enumerate(chain, 1)]
    except requests.RequestException as err:
        raise FetchError(f"{base_url}: {_describe_request_error(err)}") from None
    finally:
        if own_session:
            http.close()
    _install_chain(repo_path, ref, chain, files, max_unpacked_bytes, progress)
    return chain[-1].to_commit


def _index_url(base_url: str, branch: str) -> str:
    """The index.json of *base_url*, after checking what the caller asks for."""
    problem = branch_name_problem(branch)
    if problem is not None:
        raise FetchError(f"invalid branch name {branch!r}: {problem}")
    if urlsplit(base_url).scheme not in ("http", "https"):
        raise FetchError(f"{base_url}: a static bundle directory must be http(s)")
    return base_url if base_url.endswith("/" + INDEX_NAME) else \
        base_url.rstrip("/") + "/" + INDEX_NAME


def _chain_from(index, repo_path: str, branch: str, have: Sequence[str],
                max_bundle_bytes: int) -> List[BundleEntry]:
    """The bundles to download, from a commit the repository holds to the
    branch's head (empty: nothing to download); each within the size cap."""
    present = [c for c in dict.fromkeys(have) if HEX40.fullmatch(c or "")
               and _has_commit(repo_path, c)]
    head = index.heads.get(branch)
    if head is not None and _has_commit(repo_path, head):
        present.append(head)
    chain = choose_chain(index, branch, present)
    for bundle in chain:
        if bundle.size > max_bundle_bytes:
            raise FetchError(f"{bundle.file}: {bundle.size} bytes is more than the "
                             f"{max_bundle_bytes} allowed")
    if chain:
        log.info("fetching %s: %d bundle(s), %d bytes", branch, len(chain),
                 sum(b.size for b in chain))
    return chain


def _install_chain(repo_path: str, ref: str, chain: List[BundleEntry], files: List[str],
                   max_unpacked_bytes: int, progress: Optional[ProgressCallback]) -> None:
    """Fetch each downloaded bundle into *ref*, in order; on any failure the
    ref is put back as it was.  The downloads are deleted once fetched."""
    old_target = _read_ref(repo_path, ref)
    packs_before = _pack_files(repo_path)
    try:
        for number, (bundle, path) in enumerate(zip(chain, files), 1):
            install_bundle(repo_path, path, bundle, max_unpacked_bytes,
                           lambda phase, done, n=number, f=bundle.file:
                           _report(progress, phase, n, len(chain), f, done, 0))
    except BaseException:
        _restore_ref(repo_path, ref, old_target)
        raise
    for path in files:
        _unlink(path)
    store_received(repo_path, packs_before)
    _report(progress, "done", len(chain), len(chain), chain[-1].file, 0, 0)


def _report(progress: Optional[ProgressCallback], phase: str, number: int, count: int,
            name: str, done: int, total: int) -> None:
    if progress is not None:
        progress(FetchProgress(phase, number, count, name, done, total))


def _describe_request_error(err: Exception) -> str:
    import requests

    if isinstance(err, requests.Timeout):
        return "the server did not answer in time"
    if isinstance(err, requests.ConnectionError):
        return f"connection failed ({type(err).__name__})"
    return f"{type(err).__name__}: {err}"


def _download_small(http: "requests.Session", url: str, limit: int, timeout: float) -> bytes:
    with http.get(url, stream=True, timeout=timeout) as response:
        if response.status_code != 200:
            raise FetchError(f"{url}: HTTP {response.status_code}")
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"{url}: {declared} bytes is more than the {limit} allowed")
        data = bytearray()
        for chunk in response.iter_content(CHUNK):
            data += chunk
            if len(data) > limit:
                raise FetchError(f"{url}: more than the {limit} bytes allowed")
    return bytes(data)


def _download_bundle(http: "requests.Session", url: str, bundle: BundleEntry,
                     workdir: str, timeout: float,
                     report: Callable[[int, int], None]) -> str:
    """Download *bundle* to WORKDIR/SHA256.bundle.xz, resuming a ``.part`` file.

    The local name comes from the checksum, never from the server.  Returns
    the path once size and SHA-256 match; a mismatch deletes the ``.part``
    (the next try starts over).  An interrupted transfer keeps it.
    """
    final = os.path.join(workdir, bundle.sha256 + BUNDLE_SUFFIX)
    part = final + ".part"
    if os.path.exists(final):
        if _file_matches(final, bundle):
            return final
        _unlink(final)
    digest, have = _partial_download(part, bundle)
    if have < bundle.size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with http.get(url, stream=True, timeout=timeout, headers=headers) as response:
            mode, digest, have = _resume_mode(response, url, part, bundle, digest, have)
            report(have, bundle.size)
            have = _receive(response, url, part, mode, bundle, digest, have, report)
    if have != bundle.size:
        raise FetchError(f"{url}: download interrupted at {have} of {bundle.size} bytes "
                         "(the next fetch resumes it)")
    if digest.hexdigest() != bundle.sha256:
        _unlink(part)
        raise FetchError(f"{url}: SHA-256 {digest.hexdigest()[:16]}... is not the "
                         f"index's {bundle.sha256[:16]}...; download discarded")
    os.replace(part, final)
    return final


def _partial_download(part: str, bundle: BundleEntry):
    """(SHA-256 so far, bytes so far) of an interrupted download of *bundle*."""
    digest = hashlib.sha256()
    have = 0
    if os.path.exists(part):
        if os.path.getsize(part) > bundle.size:
            _unlink(part)
        else:
            with open(part, "rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
                    have += len(chunk)
    return digest, have


def _resume_mode(response, url: str, part: str, bundle: BundleEntry, digest, have: int):
    """How to write what the server answered: ("ab", digest, have) when it
    resumes where we stopped, ("wb", a new digest, 0) when it starts over;
    a FetchError for an answer that cannot be the bundle the index names."""
    if have and response.status_code == 206:
        if not _content_range_starts_at(response.headers.get("Content-Range"),
                                        have, bundle.size):
            raise FetchError(f"{url}: the server answered a resumed download with "
                             f"the wrong range ({response.headers.get('Content-Range')!r})")
        log.info("resuming %s at byte %d of %d", bundle.file, have, bundle.size)
        mode = "ab"
    elif response.status_code == 200:
        if have:
            log.info("%s: the server does not resume; starting over", bundle.file)
        digest, have, mode = hashlib.sha256(), 0, "wb"
    elif response.status_code == 416 and have:
        _unlink(part)   # the server's file is not what we started on
        raise FetchError(f"{url}: the server refused to resume (HTTP 416); the "
                         "partial download was discarded")
    else:
        raise FetchError(f"{url}: HTTP {response.status_code}")
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and have + int(declared) > bundle.size:
        if mode == "wb":
            _unlink(part)
        raise FetchError(f"{url}: the server sends {have + int(declared)} bytes, "
                         f"the index says {bundle.size}")
    return mode, digest, have


def _receive(response, url: str, part: str, mode: str, bundle: BundleEntry, digest,
             have: int, report: Callable[[int, int], None]) -> int:
    """Append the response's body to *part*, never past the index's size;
    returns the bytes now in *part* (fsynced however the transfer ends)."""
    import requests

    with open(part, mode) as out:
        try:
            chunks = response.iter_content(CHUNK)
            while True:
                try:
                    chunk = next(chunks, b"")
                except requests.RequestException as err:
                    raise FetchError(
                        f"{url}: download interrupted at {have} of {bundle.size} "
                        f"bytes ({_describe_request_error(err)}); the next fetch "
                        "resumes it") from None
                if not chunk:
                    break
                if have + len(chunk) > bundle.size:
                    out.close()
                    _unlink(part)
                    raise FetchError(f"{url}: more bytes than the {bundle.size} "
                                     "the index gives; download discarded")
                out.write(chunk)
                digest.update(chunk)
                have += len(chunk)
                report(have, bundle.size)
        finally:
            if not out.closed:
                out.flush()
                os.fsync(out.fileno())
    return have


def _content_range_starts_at(value: Optional[str], start: int, size: int) -> bool:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not match:
        return False
    return int(match.group(1)) == start and match.group(3) in (str(size), "*")


def _file_matches(path: str, bundle: BundleEntry) -> bool:
    if os.path.getsize(path) != bundle.size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == bundle.sha256


def install_bundle(repo_path: str, path: str, bundle: BundleEntry,
                   max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
                   report: Optional[Callable[[str, int], None]] = None) -> None:
    """Unpack the downloaded *bundle* at *path* and fetch it into
    ``refs/gitroot/incoming/BRANCH`` (a delta bundle is rebuilt into a git
    bundle first).  The caller restores that ref if this raises."""
    def tell(phase: str, done: int) -> None:
        if report is not None:
            report(phase, done)

    if bundle.from_commit and not _has_commit(repo_path, bundle.from_commit):
        raise FetchError(f"{bundle.file}: made for {bundle.from_commit[:12]}, which "
                         "this device does not have; nothing was written")
    unpacked = path[:-len(".xz")] if path.endswith(".xz") else path + ".unpacked"
    rebuilt = unpacked + ".rebuilt"
    try:
        _decompress(path, unpacked, unpacked_limit(bundle, max_unpacked_bytes),
                    lambda done: tell("unpack", done),
                    lambda head: _check_header(head, bundle))
        if bundle.format == DELTA_FORMAT:
            _rebuild_git_bundle(repo_path, unpacked, rebuilt, bundle)
            os.replace(rebuilt, unpacked)
        tell("fetch", 0)
        _git_fetch_bundle(repo_path, unpacked, bundle.branch, bundle)
    finally:
        _unlink(unpacked)
        _unlink(rebuilt)


def store_received(repo_path: str, packs_before: set) -> None:
    """Rewrite the packs received since *packs_before* (:func:`_pack_files`)
    zlib-compressed."""
    _store_compressed(repo_path, sorted(_pack_files(repo_path) - packs_before))


def unpacked_limit(bundle: BundleEntry, ceiling: int = MAX_UNPACKED_BYTES) -> int:
    """How many bytes *bundle* may decompress to: what the index declares plus
    a small margin, or (an index from before that field) LEGACY_RATIO times its
    compressed size; never more than *ceiling*."""
    if bundle.unpacked is not None:
        return min(ceiling, bundle.unpacked + UNPACKED_MARGIN)
    return min(ceiling, bundle.size * LEGACY_RATIO + UNPACKED_MARGIN)


def _decompress(path: str, target: str, limit: int, report: Callable[[int], None],
                check_header: Callable[[bytes], None]) -> None:
    """xz-decompress *path* to *target*, stopping past *limit* bytes out.

    The first bytes out are checked at once: what cannot start a bundle
    stops after one slice, and *check_header* sees the whole header before
    anything past it is written.
    """
    name = os.path.basename(path)
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    written = 0
    head = b""          # the start, kept until the header is checked
    try:
        with open(path, "rb") as source, open(target, "wb") as out:
            if source.read(len(XZ_MAGIC)) != XZ_MAGIC:
                raise FetchError(f"{name}: not an xz file")
            source.seek(0)
            while not decompressor.eof:
                chunk = source.read(CHUNK) if decompressor.needs_input else b""
                if not chunk and decompressor.needs_input:
                    raise FetchError(f"{name}: truncated xz data")
                # Small slices until the header is checked, so that a bomb
                # with a wrong header costs kilobytes, not a slice.
                data = decompressor.decompress(
                    chunk, max_length=CHUNK if head is not None else 1 << 20)
                if head is not None:
                    head += data
                    if bundle_format(head[:64]) is None:
                        raise FetchError(f"{name}: not a git bundle (v2) nor a gitroot "
                                         "delta bundle")
                    if b"\n\n" in head or len(head) >= MAX_HEADER_BYTES or decompressor.eof:
                        check_header(head)
                        head = None
                written += len(data)
                if written > limit:
                    raise FetchError(f"{name}: decompresses to more than {limit} bytes "
                                     "(the index's unpacked size and a margin); stopped")
                out.write(data)
                report(written)
            if head is not None:
                check_header(head)
            if source.read(1):
                raise FetchError(f"{name}: data after the xz stream")
    except lzma.LZMAError as err:
        raise FetchError(f"{name}: corrupt xz data ({err})") from None
    except OSError as err:
        raise FetchError(f"cannot unpack {name}: {err.strerror}") from None


def _check_header(head: bytes, bundle: BundleEntry) -> BundleHeader:
    """The bundle must be of the format, and carry exactly the branch and
    commits, the index promised."""
    try:
        header = parse_bundle_header(head)
    except ValueError as err:
        raise FetchError(f"{bundle.file}: {err}") from None
    expected_prereqs = (bundle.from_commit,) if bundle.from_commit else ()
    if header.format != bundle.format or header.prerequisites != expected_prereqs or \
            header.refs != ((f"refs/heads/{bundle.branch}", bundle.to_commit),):
        raise FetchError(f"{bundle.file}: the bundle is not what the index says "
                         f"({bundle.format} bundle, "
                         f"{(bundle.from_commit or 'full')[:12]}..{bundle.to_commit[:12]} of "
                         f"{bundle.branch})")
    return header


# -- delta bundles ---------------------------------------------------------

def _blob_entry(data: bytes) -> bytes:
    """*data* as one pack entry: type and size header, then zlib."""
    size = len(data)
    byte = (3 << 4) | (size & 0x0F)     # type 3: blob
    size >>= 4
    head = bytearray()
    while size:
        head.append(byte | 0x80)
        byte, size = size & 0x7F, size >> 7
    head.append(byte)
    # Level 1: git fetch keeps the pack as sent, and _store_compressed then
    # rewrites every received pack at git's own level anyway.
    return bytes(head) + zlib.compress(data, 1)


class _PackRewriter:
    """Copies a pack from a stream while checking its trailer, then appends
    blobs and writes the new object count and trailer.

    Git checks the pack again when it indexes it (``git fetch``); the trailer
    is checked here too because it is replaced.
    """

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha1()
        self.count = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.digest.update(data)

    def copy_pack(self, source: BinaryIO, extra_objects: int, name: str) -> None:
        header = source.read(12)
        if len(header) != 12 or header[:4] != b"PACK" or \
                struct.unpack(">I", header[4:8])[0] not in (2, 3):
            raise FetchError(f"{name}: the delta bundle's pack has no pack header")
        (count,) = struct.unpack(">I", header[8:12])
        original = hashlib.sha1(header)
        self.count = count + extra_objects
        if self.count >= 1 << 32:
            raise FetchError(f"{name}: too many objects for one pack")
        self.write(header[:8] + struct.pack(">I", self.count))
        held = b""
        for chunk in iter(lambda: source.read(1 << 20), b""):
            held += chunk
            body, held = held[:-20], held[-20:]
            original.update(body)
            self.write(body)
        if len(held) != 20 or original.digest() != held:
            raise FetchError(f"{name}: the delta bundle's pack is corrupt (bad trailer)")

    def finish(self) -> None:
        self.out.write(self.digest.digest())


def _rebuild_git_bundle(repo_path: str, unpacked: str, target: str,
                        bundle: BundleEntry) -> int:
    """Turn the decompressed delta bundle *unpacked* into a git bundle at *target*.

    Each delta's old blob must be in the repository and its result must
    hash to the blob id it names, or nothing is written to the repository
    and a :class:`FetchError` says which.  Returns how many blobs it rebuilt.
    """
    import pygit2

    repo = pygit2.Repository(repo_path)
    name = bundle.file
    staged = target + ".blobs"
    rebuilt = 0
    try:
        with open(unpacked, "rb") as source, open(staged, "w+b") as blobs:
            header = _check_header(source.read(MAX_HEADER_BYTES), bundle)
            source.seek(header.length)
            try:
                for delta in iter_records(source.read):
                    try:
                        base = repo[delta.base]
                    except (KeyError, ValueError):
                        base = None
                    if base is None or base.type_str != "blob":
                        raise FetchError(f"{name}: the delta for {delta.target[:12]} needs "
                                         f"blob {delta.base[:12]}, which this device does "
                                         "not have; nothing was written")
                    data = apply_delta(base.data, delta)
                    got = blob_id(data)
                    if got != delta.target:
                        raise FetchError(f"{name}: the delta for {delta.target[:12]} "
                                         f"rebuilds an object whose id is {got[:12]}; "
                                         "refused, nothing was written")
                    blobs.write(_blob_entry(data))
                    rebuilt += 1
            except DeltaError as err:
                raise FetchError(f"{name}: {err}; nothing was written") from None
            with open(target, "wb") as out:
                out.write(BUNDLE_SIGNATURE
                          + b"".join(f"-{c}\n".encode() for c in header.prerequisites)
                          + b"".join(f"{oid} {ref}\n".encode() for ref, oid in header.refs)
                          + b"\n")
                pack = _PackRewriter(out)
                pack.copy_pack(source, rebuilt, name)
                blobs.seek(0)
                for chunk in iter(lambda: blobs.read(1 << 20), b""):
                    pack.write(chunk)
                pack.finish()
    except OSError as err:
        raise FetchError(f"cannot rebuild {name}: {err.strerror}") from None
    finally:
        _unlink(staged)
    log.info("%s: %d file(s) rebuilt from deltas", name, rebuilt)
    return rebuilt


def _git_fetch_bundle(repo_path: str, bundle_path: str, branch: str,
                      bundle: BundleEntry) -> None:
    ref = INCOMING + branch
    proc = run_git(repo_path,
                "-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true",
                "-c", "gc.auto=0", "-c", "maintenance.auto=false",
                "fetch", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                "--quiet", "--", os.path.abspath(bundle_path),
                f"+refs/heads/{branch}:{ref}")
    if proc.returncode != 0:
        raise FetchError(f"git refused {bundle.file}: {failure_summary(proc.stderr, proc.returncode)}")
    if _read_ref(repo_path, ref) != bundle.to_commit:
        raise FetchError(f"{bundle.file}: {ref} is not {bundle.to_commit[:12]} after fetch")


def _pack_files(repo_path: str) -> set:
    pack_dir = os.path.join(repo_path, "objects", "pack")
    try:
        return {os.path.join(pack_dir, n) for n in os.listdir(pack_dir)
                if n.startswith("pack-") and n.endswith(".pack")}
    except FileNotFoundError:
        return set()


def _store_compressed(repo_path: str, packs: Sequence[str]) -> None:
    """Rewrite freshly fetched *packs* with zlib-compressed objects.

    A bundle's objects travel without zlib (xz compresses them better), and
    ``git fetch`` keeps a pack as received: stored like that a release takes
    about twice the disk, and ``git gc`` copies objects as stored, so it would
    never shrink them.  The new pack is complete before the old one goes, so
    a crash in between leaves both (harmless duplicates).  A failure here is
    only a warning: the objects are safely stored either way.
    """
    for pack in packs:
        base = pack[:-len(".pack")]
        # inside the repository: git needs its hash algorithm (git 2.47
        # crashes when run outside one, wherever the process's cwd is)
        with open(base + ".idx", "rb") as idx:
            listed = run_git(repo_path, "show-index", stdin=idx)
        ids = [line.split()[1] for line in listed.stdout.decode().splitlines()]
        if listed.returncode != 0 or not ids:
            log.warning("cannot list %s; leaving it as received", pack)
            continue
        # --window=0: stored whole, every blob stays streamable by the mount
        # (gitroot.git.blobstream; a delta is inflated whole) and the
        # recompression takes a third of the time.  Measured on the Debian
        # root (6,948 blobs): 30 s and 115 MB against 90 s and 110 MB with
        # git's default window, which stored 1,506 blobs as deltas (chains
        # up to 16); a full read through the mount took the same time within
        # the noise (docs/performance.md, "What a device serves").
        proc = run_git(repo_path, "-c", "pack.compression=-1", "pack-objects", "-q",
                    "--no-reuse-object", "--delta-base-offset", "--window=0",
                    os.path.join(repo_path, "objects", "pack", "pack"),
                    input="\n".join(ids).encode() + b"\n")
        new_base = os.path.join(repo_path, "objects", "pack",
                                "pack-" + proc.stdout.decode().strip())
        if proc.returncode != 0 or not os.path.exists(new_base + ".idx"):
            log.warning("cannot recompress %s: %s", pack, failure_summary(proc.stderr, proc.returncode))
            continue
        if new_base != base:
            for suffix in (".idx", ".pack", ".rev", ".bitmap"):
                _unlink(base + suffix)


def _has_commit(repo_path: str, commit: str) -> bool:
    return run_git(repo_path, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def _read_ref(repo_path: str, ref: str) -> Optional[str]:
    proc = run_git(repo_path, "rev-parse", "--verify", "--quiet", ref)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _set_ref(repo_path: str, ref: str, commit: str) -> None:
    proc = run_git(repo_path, "update-ref", "-m", "gitroot: static fetch", ref, commit)
    if proc.returncode != 0:
        raise FetchError(f"cannot set {ref}: {failure_summary(proc.stderr, proc.returncode)}")


def _restore_ref(repo_path: str, ref: str, target: Optional[str]) -> None:
    if _read_ref(repo_path, ref) == target:
        return
    if target is None:
        run_git(repo_path, "update-ref", "-d", ref)
    else:
        run_git(repo_path, "update-ref", "-m", "gitroot: static fetch failed", ref, target)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
