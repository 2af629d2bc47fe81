"""Making compressed git bundles for static hosting, and their index.

:func:`create_bundle` writes ``OLD..NEW`` of one branch (or all of NEW: a
full bundle) as a git bundle v2 (format in :mod:`gitroot.git.bundle`)
followed by a thin pack, and compresses the whole with xz.  The pack is
made by ``git pack-objects`` with its zlib compression turned *off* and a
short delta window, so that xz (x86 BCJ filter + LZMA2 preset 9e, one 64 MiB
dictionary over the whole pack) sees plain bytes and finds the repeats
across objects itself; that beats both git's own pack and xz over it, and
beats zstd --ultra -22 --long (figures in docs/performance.md).

:func:`update_index` (re)writes ``DIR/index.json`` from the bundles in DIR,
reading each one's header, size and SHA-256.  The device side is
:mod:`gitroot.device.static`.
"""

import hashlib
import json
import logging
import lzma
import os
import re
import subprocess
import tempfile
from typing import Dict, Optional

from gitroot import atomic
from gitroot.errors import FetchError, PublishError, RepositoryError, UsageError
from gitroot.git.bundle import (BUNDLE_SIGNATURE, BUNDLE_SUFFIX, CHUNK, FILE_NAME, INDEX_NAME,
                                BundleEntry, StaticIndex, parse_index, read_compressed_header)
from gitroot.git.command import run_git
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


def _resolve(repo_path: str, rev: str) -> str:
    return str(resolve_commit(open_repo(repo_path), rev).id)


def _branch_of(repo_path: str, rev: str) -> Optional[str]:
    proc = run_git(repo_path, "rev-parse", "--verify", "--quiet", "--symbolic-full-name",
                   "--end-of-options", rev)
    name = proc.stdout.decode().strip() if proc.returncode == 0 else ""
    return name[len("refs/heads/"):] if name.startswith("refs/heads/") else None


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
    problem = branch_name_problem(branch)
    if problem is not None:
        raise UsageError(f"invalid branch name {branch!r}: {problem}")
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
        if not FILE_NAME.fullmatch(name):
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
    try:
        atomic.write_file(index_path, (json.dumps(index.to_json(), indent=1) + "\n").encode())
    except OSError as err:
        raise PublishError(f"cannot write {index_path}: {err.strerror}") from None
    return index
