"""Making compressed git bundles for static hosting, and their index.

:func:`create_bundle` writes ``OLD..NEW`` of one branch (or all of NEW: a
full bundle) as a git bundle v2 (format in :mod:`gitroot.git.bundle`)
followed by a thin pack, and compresses the whole with xz.  The pack is
made by ``git pack-objects`` with its zlib compression turned *off* and a
short delta window, so that xz (x86 BCJ filter + LZMA2 preset 9e, one 64 MiB
dictionary over the whole pack) sees plain bytes and finds the repeats
across objects itself; that beats both git's own pack and xz over it, and
beats zstd --ultra -22 --long (figures in docs/performance.md).

:func:`create_delta_bundle` writes a delta bundle: files changed at the
same path travel as bsdiff deltas against their old blob (run by Debian's
``bsdiff`` program, carried raw so that xz compresses them with the rest),
picked per file when smaller than the file in the pack; the other objects
travel in a thin pack as above.

:func:`update_index` (re)writes ``DIR/index.json`` from the bundles in DIR,
reading each one's header, size, unpacked size and SHA-256.  The device
side is :mod:`gitroot.device.static`.

Threading: none; each call owns its temporary files.
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
from typing import Dict, List, Optional, Tuple

from gitroot import atomic
from gitroot.errors import (FetchError, MissingToolError, PublishError, RepositoryError,
                            UsageError)
from gitroot.git.bundle import (BUNDLE_SIGNATURE, BUNDLE_SUFFIX, CHUNK, DELTA_FORMAT,
                                DELTA_SIGNATURE, DELTA_SUFFIX, FILE_NAME, GIT_FORMAT,
                                INDEX_NAME, BundleEntry, StaticIndex, parse_index,
                                read_compressed_header)
from gitroot.git.command import failure_summary, run_git
from gitroot.git.filedelta import (MAX_DELTA_FILE, PACK_TAG, FileDelta, apply_delta, blob_id,
                                   from_bsdiff, max_control)
from gitroot.git.refs import branch_name_problem
from gitroot.git.repository import open_repo, resolve_commit

log = logging.getLogger(__name__)

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
#: Smaller files always travel in the pack: a delta record's 73 bytes of
#: framing and bsdiff's control stream would eat what a delta saves.
MIN_DELTA_FILE = 512
REGULAR_MODES = ("100644", "100755")
#: A bsdiff patch up to this size is taken without estimating the pack's cost.
OBVIOUS_DELTA = 512


def _resolve(repo_path: str, rev: str) -> str:
    return str(resolve_commit(open_repo(repo_path), rev).id)


def _branch_of(repo_path: str, rev: str) -> Optional[str]:
    proc = run_git(repo_path, "rev-parse", "--verify", "--quiet", "--symbolic-full-name",
                   "--end-of-options", rev)
    name = proc.stdout.decode().strip() if proc.returncode == 0 else ""
    return name[len("refs/heads/"):] if name.startswith("refs/heads/") else None


# -- making a bundle -------------------------------------------------------

@dataclass(frozen=True)
class _Span:
    """What a bundle carries, resolved and checked."""

    branch: str
    from_commit: Optional[str]
    to_commit: str


def _span(repo_path: str, to_rev: str, from_rev: Optional[str],
          branch: Optional[str]) -> _Span:
    if not os.path.isdir(repo_path):
        raise RepositoryError(f"{repo_path}: no such repository")
    to_commit = _resolve(repo_path, to_rev)
    from_commit = _resolve(repo_path, from_rev) if from_rev else None
    branch = branch or _branch_of(repo_path, to_rev)
    if not branch:
        raise UsageError(f"{to_rev!r} is not a branch: say which branch the bundle "
                         "carries with --branch")
    problem = branch_name_problem(branch)
    if problem is not None:
        raise UsageError(f"invalid branch name {branch!r}: {problem}")
    if from_commit == to_commit:
        raise UsageError(f"--from and --to are the same commit {to_commit[:12]}")
    return _Span(branch, from_commit, to_commit)


def _header(signature: bytes, span: _Span) -> bytes:
    header = signature
    if span.from_commit:
        header += f"-{span.from_commit}\n".encode()
    return header + f"{span.to_commit} refs/heads/{span.branch}\n\n".encode()


class _XzOutput:
    """The compressed output file: written beside *output*, renamed into place
    by :meth:`commit`; counts compressed and uncompressed bytes and hashes
    what it writes."""

    def __init__(self, output: str) -> None:
        self.output = output
        fd, self.tmp = tempfile.mkstemp(prefix=".bundle-",
                                        dir=os.path.dirname(os.path.abspath(output)))
        self.file = os.fdopen(fd, "wb")
        self.compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                                              filters=list(XZ_FILTERS))
        self.digest = hashlib.sha256()
        self.size = self.unpacked = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self.file.write(data)
            self.digest.update(data)
            self.size += len(data)

    def write(self, data: bytes) -> None:
        self.unpacked += len(data)
        self._emit(self.compressor.compress(data))

    def commit(self, span: _Span, kind: str) -> BundleEntry:
        self._emit(self.compressor.flush())
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.output)
        return BundleEntry(span.branch, span.from_commit, span.to_commit,
                           os.path.basename(self.output), self.size,
                           self.digest.hexdigest(), self.unpacked, kind)

    def discard(self) -> None:
        self.file.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _stream_pack(repo_path: str, revs: bytes, out: _XzOutput, *, thin: bool,
                 window: int, depth: int) -> None:
    """``git pack-objects --revs --stdout`` of the rev-list arguments *revs*
    into *out*."""
    cmd = ["git", "--git-dir", repo_path,
           "-c", f"pack.compression={PACK_COMPRESSION}",
           "pack-objects", "--revs", "--stdout", "--delta-base-offset", "-q",
           # Recompress and re-delta every object: objects already in a
           # pack would otherwise be copied zlib-compressed, as stored.
           "--no-reuse-object",
           f"--window={int(window)}", f"--depth={int(depth)}"]
    if thin:
        cmd.append("--thin")   # deltas may use OLD's objects as bases
    with tempfile.TemporaryFile() as errors:
        pack = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errors, env=dict(os.environ, LC_ALL="C"))
        assert pack.stdin is not None and pack.stdout is not None
        pack.stdin.write(revs)
        pack.stdin.close()
        for chunk in iter(lambda: pack.stdout.read(CHUNK), b""):
            out.write(chunk)
        if pack.wait() != 0:
            errors.seek(0)
            raise RepositoryError(
                "git pack-objects failed: "
                + errors.read().decode("utf-8", "replace").strip()[-500:])


def create_bundle(repo_path: str, to_rev: str, output: str, *,
                  from_rev: Optional[str] = None, branch: Optional[str] = None,
                  window: int = PACK_WINDOW, depth: int = PACK_DEPTH) -> BundleEntry:
    """Write the xz-compressed bundle of *from_rev*..*to_rev* to *output*.

    Without *from_rev*, a full bundle (everything reachable from *to_rev*).
    The bundle's one ref is ``refs/heads/BRANCH``; *branch* defaults to
    *to_rev* when that names a branch.  *output* is replaced atomically.
    Returns the entry the index will list (its ``file`` is the base name).
    """
    span = _span(repo_path, to_rev, from_rev, branch)
    revs = f"{span.to_commit}\n" + (f"^{span.from_commit}\n" if span.from_commit else "")
    out = _XzOutput(output)
    try:
        out.write(_header(BUNDLE_SIGNATURE, span))
        _stream_pack(repo_path, revs.encode(), out, thin=span.from_commit is not None,
                     window=window, depth=depth)
        return out.commit(span, GIT_FORMAT)
    except BaseException:
        out.discard()
        raise


# -- making a delta bundle -------------------------------------------------

def _changed_in_place(repo_path: str, span: _Span) -> List[Tuple[str, str, str]]:
    """(path, old blob, new blob) of regular files whose content changed at
    the same path (mode changes alone are not content changes)."""
    proc = run_git(repo_path, "diff-tree", "-r", "-z", "--no-renames", "--raw",
                   span.from_commit or "", span.to_commit)
    if proc.returncode != 0:
        raise RepositoryError(f"git diff-tree failed: "
                              f"{failure_summary(proc.stderr, proc.returncode)}")
    fields = proc.stdout.split(b"\0")
    changed = []
    for meta, path in zip(fields[0::2], fields[1::2]):
        old_mode, new_mode, old_oid, new_oid, status = meta.decode().lstrip(":").split(" ")
        if status == "M" and old_mode in REGULAR_MODES and new_mode in REGULAR_MODES \
                and old_oid != new_oid:
            changed.append((os.fsdecode(path), old_oid, new_oid))
    return changed


def _bsdiff(old: bytes, new: bytes, workdir: str) -> bytes:
    paths = [os.path.join(workdir, name) for name in ("old", "new", "patch")]
    for path, data in zip(paths, (old, new)):
        with open(path, "wb") as stream:
            stream.write(data)
    try:
        proc = subprocess.run(["bsdiff", *paths], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise MissingToolError("making a delta bundle needs bsdiff "
                               "(apt-get install bsdiff)") from None
    if proc.returncode != 0:
        raise PublishError("bsdiff failed: "
                           + proc.stderr.decode("utf-8", "replace").strip()[-300:])
    with open(paths[2], "rb") as stream:
        return stream.read()


def _pack_estimate(old: bytes, new: bytes) -> int:
    """Roughly what *new* costs inside the bundle's xz stream when the device
    has *old*: xz of both minus xz of the old alone (the pack would carry a git
    delta against the old blob, or the file whole; xz finds at least as much
    as either)."""
    window = 1 << max(20, (len(old) + len(new)).bit_length())
    filters = [{"id": lzma.FILTER_X86},
               {"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": min(window, 1 << 27)}]

    def packed(data: bytes) -> int:
        return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters))

    return max(0, packed(old + new) - packed(old))


def plan_deltas(repo_path: str, span: _Span, wanted: set, workdir: str) -> List[FileDelta]:
    """The per-file deltas of a delta bundle: for each file changed at the
    same path whose new blob travels (*wanted*), a bsdiff delta when it is
    smaller than the file would be in the pack."""
    repo = open_repo(repo_path)
    deltas: List[FileDelta] = []
    done: set = set()
    for path, old_oid, new_oid in _changed_in_place(repo_path, span):
        if new_oid not in wanted or new_oid in done:
            continue
        old, new = repo[old_oid].data, repo[new_oid].data
        if len(new) < MIN_DELTA_FILE or max(len(old), len(new)) > MAX_DELTA_FILE:
            continue
        patch = _bsdiff(old, new, workdir)
        # A patch this small cannot lose much to the pack: skip the estimate.
        estimate = 0 if len(patch) <= OBVIOUS_DELTA else _pack_estimate(old, new)
        if estimate and len(patch) >= estimate:
            continue
        delta = from_bsdiff(patch, new_oid, old_oid)
        if len(delta.control) > max_control(delta.size):
            continue   # devices refuse a control stream this long (filedelta)
        # Never publish a delta the device could not turn back into the blob.
        if blob_id(apply_delta(old, delta)) != new_oid:
            raise PublishError(f"bsdiff made a delta for {path} that does not rebuild it")
        deltas.append(delta)
        done.add(new_oid)
    return deltas


def create_delta_bundle(repo_path: str, to_rev: str, output: str, *, from_rev: str,
                        branch: Optional[str] = None, window: int = PACK_WINDOW,
                        depth: int = PACK_DEPTH) -> BundleEntry:
    """Write the delta bundle of *from_rev*..*to_rev* to *output* (format in
    :mod:`gitroot.git.bundle` and :mod:`gitroot.git.filedelta`).

    Files changed at the same path travel as bsdiff deltas against their
    old blob where that is smaller; every other object of ``FROM..TO``
    travels in a thin pack, as in :func:`create_bundle`.
    """
    if not from_rev:
        raise UsageError("a delta bundle needs --from: it carries changes to a release")
    span = _span(repo_path, to_rev, from_rev, branch)
    listed = run_git(repo_path, "rev-list", "--objects", span.to_commit,
                     f"^{span.from_commit}")
    if listed.returncode != 0:
        raise RepositoryError(f"git rev-list failed: "
                              f"{failure_summary(listed.stderr, listed.returncode)}")
    wanted = {line[:40].decode() for line in listed.stdout.split(b"\n") if line}
    with tempfile.TemporaryDirectory(prefix="gitroot-bsdiff-") as workdir:
        deltas = plan_deltas(repo_path, span, wanted, workdir)
    # The pack gets every object of FROM..TO but the rebuilt blobs: a
    # negative blob is left out of the walk as FROM's objects are.
    revs = f"{span.to_commit}\n^{span.from_commit}\n" + "".join(
        f"^{d.target}\n" for d in deltas)
    out = _XzOutput(output)
    try:
        out.write(_header(DELTA_SIGNATURE, span))
        for delta in deltas:
            out.write(delta.record())
        out.write(PACK_TAG)
        _stream_pack(repo_path, revs.encode(), out, thin=True, window=window, depth=depth)
        return out.commit(span, DELTA_FORMAT)
    except BaseException:
        out.discard()
        raise


def default_file_name(branch: str, from_commit: Optional[str], to_commit: str,
                      kind: str = GIT_FORMAT) -> str:
    """``BRANCH-FROM12-TO12.bundle.xz`` (``full`` for FROM; ``.delta.xz`` for a
    delta bundle), '/' in BRANCH as '_'."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", branch)
    start = from_commit[:12] if from_commit else "full"
    suffix = DELTA_SUFFIX if kind == DELTA_FORMAT else BUNDLE_SUFFIX
    return f"{safe}-{start}-{to_commit[:12]}{suffix}"


def entry_for_file(path: str, known: Optional[BundleEntry] = None) -> BundleEntry:
    """The index entry of the bundle at *path*, from its header and bytes.

    *known* is what the previous index said of this file: if size and SHA-256
    still match, its unpacked size is kept rather than counted again by
    decompressing the whole bundle.
    """
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
    if header.format == DELTA_FORMAT and not header.prerequisites:
        raise UsageError(f"{path}: a delta bundle without a prerequisite commit")
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    ref, to_commit = branches[0]
    from_commit = header.prerequisites[0] if header.prerequisites else None
    if known is not None and known.unpacked is not None and \
            (known.size, known.sha256) == (os.path.getsize(path), digest.hexdigest()):
        return BundleEntry(ref[len("refs/heads/"):], from_commit, to_commit, name,
                           known.size, known.sha256, known.unpacked, header.format)
    digest = hashlib.sha256()
    size = unpacked = 0
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
            try:
                # Counted in slices: a bundle made elsewhere may inflate a lot.
                unpacked += len(decompressor.decompress(chunk, max_length=1 << 24))
                while not decompressor.eof and not decompressor.needs_input:
                    unpacked += len(decompressor.decompress(b"", max_length=1 << 24))
            except (lzma.LZMAError, EOFError) as err:
                raise UsageError(f"{path}: not a gitroot bundle: {err}") from None
    if not decompressor.eof:
        raise UsageError(f"{path}: not a gitroot bundle: truncated xz data")
    return BundleEntry(ref[len("refs/heads/"):], from_commit, to_commit, name, size,
                       digest.hexdigest(), unpacked, header.format)


def update_index(directory: str, heads: Optional[Dict[str, str]] = None) -> StaticIndex:
    """(Re)write ``DIRECTORY/index.json`` from the ``*.bundle.xz`` and
    ``*.delta.xz`` files in it.

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
             if n.endswith((BUNDLE_SUFFIX, DELTA_SUFFIX)) and not n.startswith(".")]
    for name in names:
        if not FILE_NAME.fullmatch(name):
            raise UsageError(f"{os.path.join(directory, name)}: file name not allowed in an "
                             "index (letters, digits and ._+- only)")
    order = {b.file: i for i, b in enumerate(previous.bundles)} if previous else {}
    names.sort(key=lambda n: (order.get(n, len(order)),
                              os.stat(os.path.join(directory, n)).st_mtime_ns, n))
    known = {b.file: b for b in previous.bundles} if previous else {}
    entries = [entry_for_file(os.path.join(directory, n), known.get(n)) for n in names]

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
    try:
        atomic.write_file(index_path, (json.dumps(index.to_json(), indent=1) + "\n").encode())
    except OSError as err:
        raise PublishError(f"cannot write {index_path}: {err.strerror}") from None
    return index
