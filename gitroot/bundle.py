"""Compressed git bundles for static hosting: make them, index them, fetch them.

A release can be published without a git server: a plain static HTTP
directory holds xz-compressed git bundles and a small ``index.json``
describing them (docs/server.md).  This module has both sides.

Publisher (``gitroot bundle``):

* :func:`create_bundle` writes ``OLD..NEW`` of one branch (or all of NEW: a
  full bundle) as a git bundle v2 -- the header ``# v2 git bundle``, the
  prerequisite ``-OLD``, the ref ``NEW refs/heads/BRANCH``, a blank line --
  followed by a thin pack, and compresses the whole with xz.  The pack is
  made by ``git pack-objects`` with its zlib compression turned *off* and a
  short delta window, so that xz (x86 BCJ filter + LZMA2 preset 9e, one 64 MiB
  dictionary over the whole pack) sees plain bytes and finds the repeats
  across objects itself; that beats both git's own pack and xz over it, and
  beats zstd --ultra -22 --long (figures in docs/performance.md).
* :func:`update_index` (re)writes ``DIR/index.json`` from the bundles in DIR,
  reading each one's header, size and SHA-256.

Device (:func:`fetch_static`, called by :mod:`gitroot.fetch`): read the
index, choose the cheapest chain of bundles from a commit the device has to
the branch's head, download each with resume (HTTP Range into a ``.part``
file; size and SHA-256 checked at the end), decompress, check the header,
and ``git fetch`` it into ``refs/gitroot/incoming/BRANCH`` -- the only ref
this module ever moves -- then rewrite the received packs zlib-compressed.  Signature checks and pins are the fetcher's job.

Everything from the server is hostile: the index is size-capped and every
field checked; a file name is a plain name in the same directory; a
download may not exceed the size the index gives; decompressed output is
capped; the bundle's header must name exactly the commits the index
promised; git checks every object (``fetch.fsckObjects``).

Threading: no shared state.  Each call owns its files; the fetcher's lock
keeps two fetches from sharing a download directory.
"""

import hashlib
import json
import logging
import lzma
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence,
                    Tuple, Union)
from urllib.parse import quote, urljoin, urlsplit

from gitroot.errors import FetchError, RepositoryError, UsageError
from gitroot.state import atomic_write

if TYPE_CHECKING:  # imported at run time only where used: the verb needs no HTTP
    import pygit2
    import requests

log = logging.getLogger(__name__)

BUNDLE_SIGNATURE = b"# v2 git bundle\n"
BUNDLE_SUFFIX = ".bundle.xz"
INDEX_NAME = "index.json"
INDEX_FORMAT = "gitroot-bundles/1"
INCOMING = "refs/gitroot/incoming/"

#: pack-objects settings measured best under xz (docs/performance.md): no zlib
#: inside the pack, and deltas only between close neighbours (same file name).
PACK_COMPRESSION = 0
PACK_WINDOW = 3
PACK_DEPTH = 50
#: x86 BCJ makes machine code more compressible; text is not hurt measurably.
XZ_FILTERS = (
    {"id": lzma.FILTER_X86},
    {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "nice_len": 273},
)

MAX_INDEX_BYTES = 4 << 20
MAX_BUNDLE_BYTES = 16 << 30
MAX_UNPACKED_BYTES = 64 << 30
MAX_HEADER_BYTES = 1 << 20
CHUNK = 1 << 16

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")
_XZ_MAGIC = b"\xfd7zXZ\x00"


# -- records ---------------------------------------------------------------

@dataclass(frozen=True)
class BundleHeader:
    """What a bundle's header says: prerequisite commits and (ref, commit) pairs."""

    prerequisites: Tuple[str, ...]
    refs: Tuple[Tuple[str, str], ...]
    length: int
    """Bytes of the header, including the blank line; the pack follows."""


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

    def to_json(self) -> dict:
        return {"branch": self.branch, "from": self.from_commit, "to": self.to_commit,
                "file": self.file, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class StaticIndex:
    """``index.json``: the bundles, and each branch's newest commit (its head)."""

    heads: Dict[str, str]
    bundles: Tuple[BundleEntry, ...]

    def to_json(self) -> dict:
        return {"format": INDEX_FORMAT,
                "heads": dict(sorted(self.heads.items())),
                "bundles": [b.to_json() for b in self.bundles]}


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


# -- git plumbing ----------------------------------------------------------

def _git(repo_path: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", GIT_TERMINAL_PROMPT="0")
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(["git", "--git-dir", repo_path, *args], env=env, **kwargs)


def _git_error(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or b"")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    wanted = [line for line in lines if line.startswith(("error:", "fatal:"))] or lines
    return "; ".join(dict.fromkeys(wanted[-3:])) or f"git exited {proc.returncode}"


def _resolve(repo_path: str, rev: str) -> str:
    if not rev or rev.startswith("-"):
        raise RepositoryError(f"invalid revision {rev!r}")
    proc = _git(repo_path, "rev-parse", "--verify", "--quiet", "--end-of-options",
                rev + "^{commit}")
    if proc.returncode != 0:
        raise RepositoryError(f"unknown revision {rev!r} in {repo_path}")
    return proc.stdout.decode().strip()


def _branch_of(repo_path: str, rev: str) -> Optional[str]:
    proc = _git(repo_path, "rev-parse", "--verify", "--quiet", "--symbolic-full-name",
                "--end-of-options", rev)
    name = proc.stdout.decode().strip() if proc.returncode == 0 else ""
    return name[len("refs/heads/"):] if name.startswith("refs/heads/") else None


def _valid_branch(branch: str) -> bool:
    if not branch or branch.startswith("-"):
        return False
    proc = subprocess.run(["git", "check-ref-format", f"refs/heads/{branch}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc.returncode == 0


# -- making a bundle -------------------------------------------------------

def create_bundle(repo_path: str, to_rev: str, output: str, *,
                  from_rev: Optional[str] = None, branch: Optional[str] = None,
                  window: int = PACK_WINDOW, depth: int = PACK_DEPTH) -> BundleEntry:
    """Write the xz-compressed bundle of *from_rev*..*to_rev* to *output*.

    Without *from_rev*, a full bundle (everything reachable from *to_rev*).
    The bundle's one ref is ``refs/heads/BRANCH``; *branch* defaults to
    *to_rev* when that names a branch.  *output* is replaced atomically.
    Returns the entry the index will list (its ``file`` is the base name).
    """
    if not os.path.isdir(repo_path):
        raise RepositoryError(f"{repo_path}: no such repository")
    to_commit = _resolve(repo_path, to_rev)
    from_commit = _resolve(repo_path, from_rev) if from_rev else None
    branch = branch or _branch_of(repo_path, to_rev)
    if not branch:
        raise UsageError(f"{to_rev!r} is not a branch: say which branch the bundle "
                         "carries with --branch")
    if not _valid_branch(branch):
        raise UsageError(f"invalid branch name {branch!r}")
    if from_commit == to_commit:
        raise UsageError(f"--from and --to are the same commit {to_commit[:12]}")

    header = BUNDLE_SIGNATURE
    if from_commit:
        header += f"-{from_commit}\n".encode()
    header += f"{to_commit} refs/heads/{branch}\n\n".encode()
    revs = f"{to_commit}\n" + (f"^{from_commit}\n" if from_commit else "")

    out_dir = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=out_dir)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ,
                                             check=lzma.CHECK_CRC64,
                                             filters=list(XZ_FILTERS))

            def emit(data: bytes) -> None:
                nonlocal size
                if data:
                    out.write(data)
                    digest.update(data)
                    size += len(data)

            emit(compressor.compress(header))
            cmd = ["git", "--git-dir", repo_path,
                   "-c", f"pack.compression={PACK_COMPRESSION}",
                   "pack-objects", "--revs", "--stdout", "--delta-base-offset", "-q",
                   # Recompress and re-delta every object: objects already in a
                   # pack would otherwise be copied zlib-compressed, as stored.
                   "--no-reuse-object",
                   f"--window={int(window)}", f"--depth={int(depth)}"]
            if from_commit:
                cmd.append("--thin")   # deltas may use OLD's objects as bases
            with tempfile.TemporaryFile() as errors:
                pack = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=errors, env=dict(os.environ, LC_ALL="C"))
                assert pack.stdin is not None and pack.stdout is not None
                pack.stdin.write(revs.encode())
                pack.stdin.close()
                for chunk in iter(lambda: pack.stdout.read(CHUNK), b""):
                    emit(compressor.compress(chunk))
                if pack.wait() != 0:
                    errors.seek(0)
                    raise RepositoryError(
                        "git pack-objects failed: "
                        + errors.read().decode("utf-8", "replace").strip()[-500:])
            emit(compressor.flush())
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return BundleEntry(branch, from_commit, to_commit, os.path.basename(output), size,
                       digest.hexdigest())


def default_file_name(branch: str, from_commit: Optional[str], to_commit: str) -> str:
    """``BRANCH-FROM12-TO12.bundle.xz`` (``full`` for FROM), '/' in BRANCH as '_'."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", branch)
    start = from_commit[:12] if from_commit else "full"
    return f"{safe}-{start}-{to_commit[:12]}{BUNDLE_SUFFIX}"


# -- reading bundles -------------------------------------------------------

def parse_bundle_header(data: bytes) -> BundleHeader:
    """Parse the start of an (uncompressed) bundle; raise ValueError if malformed.

    Pure.  Accepts the v2 format gitroot writes: prerequisites ``-OID
    [comment]``, refs ``OID REFNAME``, a blank line.
    """
    if not data.startswith(BUNDLE_SIGNATURE):
        raise ValueError("not a git bundle (v2)")
    end = data.find(b"\n\n", len(BUNDLE_SIGNATURE) - 1)
    if end < 0:
        raise ValueError("bundle header has no end")
    prerequisites: List[str] = []
    refs: List[Tuple[str, str]] = []
    for raw in data[len(BUNDLE_SIGNATURE):end].split(b"\n"):
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("bundle header is not ASCII") from None
        if line.startswith("-"):
            oid = line[1:].split(" ", 1)[0]
            if not _HEX40.fullmatch(oid):
                raise ValueError(f"bad prerequisite line {line[:80]!r}")
            prerequisites.append(oid)
        else:
            parts = line.split(" ")
            if len(parts) != 2 or not _HEX40.fullmatch(parts[0]) or not parts[1]:
                raise ValueError(f"bad ref line {line[:80]!r}")
            refs.append((parts[1], parts[0]))
    if not refs:
        raise ValueError("bundle names no ref")
    return BundleHeader(tuple(prerequisites), tuple(refs), end + 2)


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


def entry_for_file(path: str) -> BundleEntry:
    """The index entry of the bundle at *path*, from its header and bytes."""
    name = os.path.basename(path)
    try:
        header = read_compressed_header(path)
    except (ValueError, lzma.LZMAError, EOFError) as err:
        raise UsageError(f"{path}: not a gitroot bundle: {err}") from None
    branches = [(ref, oid) for ref, oid in header.refs if ref.startswith("refs/heads/")]
    if len(branches) != 1 or len(header.prerequisites) > 1:
        raise UsageError(f"{path}: a gitroot bundle carries one branch from at most one "
                         f"commit; this one has {len(branches)} branches and "
                         f"{len(header.prerequisites)} prerequisites")
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    ref, to_commit = branches[0]
    return BundleEntry(ref[len("refs/heads/"):],
                       header.prerequisites[0] if header.prerequisites else None,
                       to_commit, name, size, digest.hexdigest())


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
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format") != INDEX_FORMAT:
        raise bad(f"format is {doc.get('format')!r}, expected {INDEX_FORMAT!r}")
    heads = doc.get("heads")
    bundles = doc.get("bundles")
    if not isinstance(heads, dict) or not isinstance(bundles, list):
        raise bad("'heads' must be an object and 'bundles' a list")
    for branch, commit in heads.items():
        if not isinstance(commit, str) or not _HEX40.fullmatch(commit):
            raise bad(f"head of {branch!r} is not a commit id")
    entries = []
    for number, item in enumerate(bundles, 1):
        if not isinstance(item, dict):
            raise bad(f"bundle {number} is not an object")
        branch, start, end = item.get("branch"), item.get("from"), item.get("to")
        name, size, sha = item.get("file"), item.get("size"), item.get("sha256")
        if not isinstance(branch, str) or not branch:
            raise bad(f"bundle {number}: 'branch' must be a name")
        if start is not None and not (isinstance(start, str) and _HEX40.fullmatch(start)):
            raise bad(f"bundle {number}: 'from' must be a commit id or null")
        if not (isinstance(end, str) and _HEX40.fullmatch(end)):
            raise bad(f"bundle {number}: 'to' must be a commit id")
        if not (isinstance(name, str) and _FILE_NAME.fullmatch(name)):
            raise bad(f"bundle {number}: 'file' must be a plain file name")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise bad(f"bundle {number}: 'size' must be a positive integer")
        if not (isinstance(sha, str) and _HEX64.fullmatch(sha)):
            raise bad(f"bundle {number}: 'sha256' must be 64 hex digits")
        entries.append(BundleEntry(branch, start, end, name, size, sha))
    return StaticIndex(dict(heads), tuple(entries))


def update_index(directory: str, heads: Optional[Dict[str, str]] = None) -> StaticIndex:
    """(Re)write ``DIRECTORY/index.json`` from the ``*.bundle.xz`` files in it.

    Each branch's head is, in order: *heads* (what was just published), the
    previous index's head if a bundle still leads to it, else the ``to`` of
    the newest bundle file (by modification time) of that branch.  Bundles
    keep the previous index's order; new ones follow, oldest first.  The
    file is replaced atomically.
    """
    index_path = os.path.join(directory, INDEX_NAME)
    previous: Optional[StaticIndex] = None
    if os.path.exists(index_path):
        with open(index_path, "rb") as stream:
            try:
                previous = parse_index(stream.read(), index_path)
            except FetchError as err:
                log.warning("ignoring the old index: %s", err)
    names = [n for n in os.listdir(directory)
             if n.endswith(BUNDLE_SUFFIX) and not n.startswith(".")]
    for name in names:
        if not _FILE_NAME.fullmatch(name):
            raise UsageError(f"{os.path.join(directory, name)}: file name not allowed in an "
                             "index (letters, digits and ._+- only)")
    order = {b.file: i for i, b in enumerate(previous.bundles)} if previous else {}
    names.sort(key=lambda n: (order.get(n, len(order)),
                              os.stat(os.path.join(directory, n)).st_mtime_ns, n))
    entries = [entry_for_file(os.path.join(directory, n)) for n in names]

    new_heads: Dict[str, str] = {}
    for entry in entries:  # newest file last: its 'to' is the fallback head
        new_heads[entry.branch] = entry.to_commit
    if previous:
        for branch, commit in previous.heads.items():
            if any(e.branch == branch and e.to_commit == commit for e in entries):
                new_heads[branch] = commit
    for branch, commit in (heads or {}).items():
        if not any(e.branch == branch and e.to_commit == commit for e in entries):
            raise UsageError(f"no bundle in {directory} leads {branch} to {commit[:12]}")
        new_heads[branch] = commit
    index = StaticIndex(new_heads, tuple(entries))
    atomic_write(index_path, (json.dumps(index.to_json(), indent=1) + "\n").encode())
    return index


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


# -- fetching --------------------------------------------------------------

def fetch_static(base_url: str, repo: Union["pygit2.Repository", str, "os.PathLike[str]"],
                 branch: str,
                 have: Sequence[str], workdir: str,
                 progress: Optional[ProgressCallback] = None, *,
                 timeout: float = 30.0,
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
    they are deleted once fetched.

    Returns the head commit id, which ``refs/gitroot/incoming/BRANCH`` then
    names.  No other ref changes, ever; on any error that ref is left as it
    was.  Raises :class:`FetchError` (network, server, bad index, a
    download of the wrong size or checksum, a bundle that is not what the
    index says, git refusing it).
    """
    import requests

    repo_path = os.fspath(repo) if isinstance(repo, (str, os.PathLike)) else repo.path
    repo_path = repo_path.rstrip("/") or "/"
    if not _valid_branch(branch):
        raise FetchError(f"invalid branch name {branch!r}")
    scheme = urlsplit(base_url).scheme
    if scheme not in ("http", "https"):
        raise FetchError(f"{base_url}: a static bundle directory must be http(s)")
    index_url = base_url if base_url.endswith("/" + INDEX_NAME) else \
        base_url.rstrip("/") + "/" + INDEX_NAME
    os.makedirs(workdir, exist_ok=True)
    ref = INCOMING + branch

    own_session = session is None
    http = session if session is not None else requests.Session()
    if own_session:
        from gitroot import __version__
        http.headers["User-Agent"] = f"gitroot/{__version__}"
    try:
        _report(progress, "index", 0, 0, INDEX_NAME, 0, 0)
        index = parse_index(_download_small(http, index_url, max_index_bytes, timeout),
                            index_url)
        present = [c for c in dict.fromkeys(have) if _HEX40.fullmatch(c or "")
                   and _has_commit(repo_path, c)]
        head = index.heads.get(branch)
        if head is not None and _has_commit(repo_path, head):
            present.append(head)
        chain = choose_chain(index, branch, present)
        if not chain:
            _set_ref(repo_path, ref, index.heads[branch])
            _report(progress, "done", 0, 0, "", 0, 0)
            return index.heads[branch]
        for bundle in chain:
            if bundle.size > max_bundle_bytes:
                raise FetchError(f"{bundle.file}: {bundle.size} bytes is more than the "
                                 f"{max_bundle_bytes} allowed")
        log.info("fetching %s: %d bundle(s), %d bytes", branch, len(chain),
                 sum(b.size for b in chain))
        files = []
        for number, bundle in enumerate(chain, 1):
            url = urljoin(index_url, quote(bundle.file))
            files.append(_download_bundle(http, url, bundle, workdir, timeout,
                                          lambda done, total, n=number, f=bundle.file:
                                          _report(progress, "download", n, len(chain), f,
                                                  done, total)))
    except requests.RequestException as err:
        raise FetchError(f"{base_url}: {_describe_request_error(err)}") from None
    finally:
        if own_session:
            http.close()

    old_target = _read_ref(repo_path, ref)
    packs_before = _pack_files(repo_path)
    try:
        for number, (bundle, path) in enumerate(zip(chain, files), 1):
            unpacked = path[:-len(".xz")]
            try:
                _decompress(path, unpacked, max_unpacked_bytes,
                            lambda done, n=number, f=bundle.file:
                            _report(progress, "unpack", n, len(chain), f, done, 0))
                _check_header(unpacked, bundle)
                _report(progress, "fetch", number, len(chain), bundle.file, 0, 0)
                _git_fetch_bundle(repo_path, unpacked, branch, bundle)
            finally:
                _unlink(unpacked)
    except BaseException:
        _restore_ref(repo_path, ref, old_target)
        raise
    for path in files:
        _unlink(path)
    _store_compressed(repo_path, sorted(_pack_files(repo_path) - packs_before))
    head = chain[-1].to_commit
    _report(progress, "done", len(chain), len(chain), chain[-1].file, 0, 0)
    return head


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
    import requests

    final = os.path.join(workdir, bundle.sha256 + BUNDLE_SUFFIX)
    part = final + ".part"
    if os.path.exists(final):
        if _file_matches(final, bundle):
            return final
        _unlink(final)
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
    if have < bundle.size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with http.get(url, stream=True, timeout=timeout, headers=headers) as response:
            if have and response.status_code == 206:
                if not _content_range_starts_at(response.headers.get("Content-Range"),
                                                have, bundle.size):
                    raise FetchError(f"{url}: the server answered a resumed download with "
                                     f"the wrong range "
                                     f"({response.headers.get('Content-Range')!r})")
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
            report(have, bundle.size)
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
    if have != bundle.size:
        raise FetchError(f"{url}: download interrupted at {have} of {bundle.size} bytes "
                         "(the next fetch resumes it)")
    if digest.hexdigest() != bundle.sha256:
        _unlink(part)
        raise FetchError(f"{url}: SHA-256 {digest.hexdigest()[:16]}... is not the "
                         f"index's {bundle.sha256[:16]}...; download discarded")
    os.replace(part, final)
    return final


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


def _decompress(path: str, target: str, limit: int, report: Callable[[int], None]) -> None:
    """xz-decompress *path* to *target*, at most *limit* bytes out."""
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    written = 0
    try:
        with open(path, "rb") as source, open(target, "wb") as out:
            if source.read(len(_XZ_MAGIC)) != _XZ_MAGIC:
                raise FetchError(f"{os.path.basename(path)}: not an xz file")
            source.seek(0)
            while not decompressor.eof:
                chunk = source.read(CHUNK) if decompressor.needs_input else b""
                if not chunk and decompressor.needs_input:
                    raise FetchError(f"{os.path.basename(path)}: truncated xz data")
                data = decompressor.decompress(chunk, max_length=1 << 20)
                written += len(data)
                if written > limit:
                    raise FetchError(f"{os.path.basename(path)}: decompresses to more than "
                                     f"{limit} bytes")
                out.write(data)
                report(written)
            if source.read(1):
                raise FetchError(f"{os.path.basename(path)}: data after the xz stream")
    except lzma.LZMAError as err:
        raise FetchError(f"{os.path.basename(path)}: corrupt xz data ({err})") from None
    except OSError as err:
        raise FetchError(f"cannot unpack {os.path.basename(path)}: {err.strerror}") from None


def _check_header(path: str, bundle: BundleEntry) -> None:
    """The bundle must carry exactly the branch and commits the index promised."""
    with open(path, "rb") as stream:
        head = stream.read(MAX_HEADER_BYTES)
    try:
        header = parse_bundle_header(head)
    except ValueError as err:
        raise FetchError(f"{bundle.file}: {err}") from None
    expected_prereqs = (bundle.from_commit,) if bundle.from_commit else ()
    if header.prerequisites != expected_prereqs or \
            header.refs != ((f"refs/heads/{bundle.branch}", bundle.to_commit),):
        raise FetchError(f"{bundle.file}: the bundle is not what the index says "
                         f"({bundle.from_commit or 'full'}..{bundle.to_commit[:12]} of "
                         f"{bundle.branch})")


def _git_fetch_bundle(repo_path: str, bundle_path: str, branch: str,
                      bundle: BundleEntry) -> None:
    ref = INCOMING + branch
    proc = _git(repo_path,
                "-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true",
                "-c", "gc.auto=0", "-c", "maintenance.auto=false",
                "fetch", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                "--quiet", "--", os.path.abspath(bundle_path),
                f"+refs/heads/{branch}:{ref}")
    if proc.returncode != 0:
        raise FetchError(f"git refused {bundle.file}: {_git_error(proc)}")
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
            listed = _git(repo_path, "show-index", stdin=idx)
        ids = [line.split()[1] for line in listed.stdout.decode().splitlines()]
        if listed.returncode != 0 or not ids:
            log.warning("cannot list %s; leaving it as received", pack)
            continue
        proc = _git(repo_path, "-c", "pack.compression=-1", "pack-objects", "-q",
                    "--no-reuse-object", "--delta-base-offset",
                    os.path.join(repo_path, "objects", "pack", "pack"),
                    input="\n".join(ids).encode() + b"\n")
        new_base = os.path.join(repo_path, "objects", "pack",
                                "pack-" + proc.stdout.decode().strip())
        if proc.returncode != 0 or not os.path.exists(new_base + ".idx"):
            log.warning("cannot recompress %s: %s", pack, _git_error(proc))
            continue
        if new_base != base:
            for suffix in (".idx", ".pack", ".rev", ".bitmap"):
                _unlink(base + suffix)


def _has_commit(repo_path: str, commit: str) -> bool:
    return _git(repo_path, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def _read_ref(repo_path: str, ref: str) -> Optional[str]:
    proc = _git(repo_path, "rev-parse", "--verify", "--quiet", ref)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _set_ref(repo_path: str, ref: str, commit: str) -> None:
    proc = _git(repo_path, "update-ref", "-m", "gitroot: static fetch", ref, commit)
    if proc.returncode != 0:
        raise FetchError(f"cannot set {ref}: {_git_error(proc)}")


def _restore_ref(repo_path: str, ref: str, target: Optional[str]) -> None:
    if _read_ref(repo_path, ref) == target:
        return
    if target is None:
        _git(repo_path, "update-ref", "-d", ref)
    else:
        _git(repo_path, "update-ref", "-m", "gitroot: static fetch failed", ref, target)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
