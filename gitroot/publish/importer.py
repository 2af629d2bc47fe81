"""Publishing: a directory tree -> git blobs, trees, a manifest and a commit.

Git keeps contents, names, symlinks and the 644/755 bit; everything else a
root filesystem needs goes into the manifest (see ``gitroot.git.manifest``),
committed at ``.gitroot/manifest`` in the same tree, so one commit id pins
both the bytes and the metadata and one signature covers both.

A second import of a slightly changed tree is fast because a *stat cache*
(like git's index) remembers, per source path, the (device, inode, size,
mtime, ctime) it saw and the blob id it computed; unchanged files are not
read again.  The cache lives in the repository (``gitroot/import-cache``) and
is only a hint: a blob id from it is used only if the object still exists,
and entries modified within two seconds of the previous import are hashed
again (git's "racy" rule).

Threading: single-threaded; an :class:`Importer` is used once.
"""

import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import pygit2

from gitroot.git import objects as go
from gitroot.git import manifest as mf
from gitroot.errors import RepositoryError, SourceError
from gitroot.git.repository import default_signature, open_or_init_bare

if TYPE_CHECKING:  # signing is imported only when a key is given
    from gitroot.signing.objects import Signer

log = logging.getLogger(__name__)


CACHE_VERSION = b"# gitroot import cache v1"
RACY_SECONDS = 2
BIG_FILE = 64 * 1024 * 1024


@dataclass
class ImportStats:
    entries: int = 0
    files: int = 0
    bytes_hashed: int = 0
    files_hashed: int = 0
    files_from_cache: int = 0


@dataclass
class ImportResult:
    commit: str
    tree: str
    stats: ImportStats


class _StatCache:
    """(path -> stat fingerprint, blob id) remembered between imports."""

    def __init__(self, path: str):
        self.path = path
        self.old: Dict[bytes, Tuple[Tuple[int, ...], bytes]] = {}
        self.new: Dict[bytes, Tuple[Tuple[int, ...], bytes]] = {}
        self.written_at = 0
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as err:
            log.warning("ignoring unreadable import cache %s: %s", path, err)
            return
        lines = data.split(b"\n")
        if not lines or not lines[0].startswith(CACHE_VERSION):
            return
        try:
            self.written_at = int(lines[0].split()[-1])
            for line in lines[1:]:
                if not line:
                    continue
                p, dev, ino, size, mtime, ctime, oid = line.split(b"\t")
                self.old[mf.unescape_path(p)] = (
                    (int(dev), int(ino), int(size), int(mtime), int(ctime)),
                    bytes.fromhex(oid.decode()))
        except (ValueError, IndexError):
            log.warning("ignoring corrupt import cache %s", path)
            self.old = {}

    def lookup(self, path: bytes, st: os.stat_result) -> Optional[bytes]:
        hit = self.old.get(path)
        if hit is None:
            return None
        fingerprint, oid = hit
        if fingerprint != _fingerprint(st):
            return None
        if st.st_mtime_ns // 1_000_000_000 >= self.written_at - RACY_SECONDS:
            return None
        return oid

    def remember(self, path: bytes, st: os.stat_result, oid: bytes) -> None:
        self.new[path] = (_fingerprint(st), oid)

    def save(self) -> None:
        lines = [CACHE_VERSION + b" %d" % int(time.time())]
        for p, (fp, oid) in self.new.items():
            lines.append(b"\t".join([mf.escape_path(p)] + [b"%d" % v for v in fp]
                                    + [oid.hex().encode()]))
        tmp = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(b"\n".join(lines) + b"\n")
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("could not save import cache %s: %s", self.path, err)


def _fingerprint(st: os.stat_result) -> Tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_xattrs(full: bytes, rel: bytes) -> Tuple[Tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError as err:
        if err.errno in (95, 61):  # EOPNOTSUPP, ENODATA
            return ()
        raise SourceError(f"{_show(rel)}: cannot list extended attributes: "
                          f"{err.strerror}") from None
    out = []
    for name in sorted(names):
        try:
            value = os.getxattr(full, name, follow_symlinks=False)
        except OSError as err:
            raise SourceError(f"{_show(rel)}: cannot read extended attribute "
                              f"{name}: {err.strerror}") from None
        out.append((os.fsencode(name), value))
    return tuple(out)


def _show(rel: bytes) -> str:
    return "/" if rel == b"." else "/" + os.fsdecode(rel)


class Importer:
    """Turns one source directory into one commit."""

    def __init__(self, repo: pygit2.Repository, source: str):
        self.repo = repo
        self.odb = repo.odb
        self.source = os.fsencode(os.path.abspath(source))
        self.entries: List[mf.Entry] = []
        self.stats = ImportStats()
        self.links: Dict[Tuple[int, int], bytes] = {}
        #: trees and the manifest: what a mount reads before any content
        self.metadata_objects: List[bytes] = []
        key = hashlib.sha256(self.source).hexdigest()[:16]
        self.cache = _StatCache(os.path.join(repo.path, "gitroot", f"import-cache-{key}"))

    # -- walking ---------------------------------------------------------

    def import_tree(self) -> bytes:
        """Walk the source; return the raw id of the root tree (manifest included)."""
        try:
            st = os.lstat(self.source)
        except OSError as err:
            raise SourceError(f"{os.fsdecode(self.source)}: {err.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{os.fsdecode(self.source)}: not a directory")
        self.entries.append(self._entry(b".", self.source, st))
        items = self._walk_dir(self.source, b".")
        if any(name == mf.MANIFEST_DIR for _, name, _ in items) or \
                any(e.path == mf.MANIFEST_DIR for e in self.entries):
            raise SourceError(f"/{mf.MANIFEST_DIR.decode()}: this name is reserved "
                              "for gitroot's manifest")
        # what devices would refuse to mount is refused here already
        mf.check_manifest_size(0, len(self.entries))
        manifest = mf.format_manifest(self.entries)
        mf.check_manifest_size(len(manifest))
        man_blob = self.odb.write(go.OBJ_BLOB, manifest)
        man_tree = self.odb.write(go.OBJ_TREE, go.format_tree(
            [(go.MODE_BLOB, mf.MANIFEST_NAME, _raw(man_blob))]))
        items.append((go.MODE_TREE, mf.MANIFEST_DIR, _raw(man_tree)))
        tree = self.odb.write(go.OBJ_TREE, go.format_tree(items))
        self.metadata_objects += [_raw(man_blob), _raw(man_tree), _raw(tree)]
        self.cache.save()
        return _raw(tree)

    def _walk_dir(self, full: bytes, rel: bytes) -> List[Tuple[int, bytes, bytes]]:
        try:
            with os.scandir(full) as it:
                names = sorted(e.name for e in it)
        except OSError as err:
            raise SourceError(f"{_show(rel)}: cannot list directory: {err.strerror}") from None
        items = []
        for name in names:
            child_full = full + b"/" + name
            child_rel = name if rel == b"." else rel + b"/" + name
            try:
                st = os.lstat(child_full)
            except OSError as err:
                raise SourceError(f"{_show(child_rel)}: {err.strerror}") from None
            item = self._import_entry(child_full, child_rel, name, st)
            if item is not None:
                items.append(item)
        return items

    def _import_entry(self, full: bytes, rel: bytes, name: bytes,
                      st: os.stat_result) -> Optional[Tuple[int, bytes, bytes]]:
        mode = st.st_mode
        self.stats.entries += 1
        if stat.S_ISDIR(mode):
            self.entries.append(self._entry(rel, full, st))
            items = self._walk_dir(full, rel)
            if not items:
                return None     # git drops empty trees; the manifest keeps the directory
            tree = self.odb.write(go.OBJ_TREE, go.format_tree(items))
            self.metadata_objects.append(_raw(tree))
            return (go.MODE_TREE, name, _raw(tree))
        if stat.S_ISREG(mode):
            self.stats.files += 1
            hardlink = None
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                hardlink = self.links.get(key)
                if hardlink is None:
                    self.links[key] = rel
            oid = self._file_blob(full, rel, st)
            self.entries.append(self._entry(rel, full, st, size=st.st_size, hardlink=hardlink))
            git_mode = go.MODE_EXEC if mode & 0o111 else go.MODE_BLOB
            return (git_mode, name, oid)
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(full)
            except OSError as err:
                raise SourceError(f"{_show(rel)}: cannot read symlink: {err.strerror}") from None
            oid = _raw(self.odb.write(go.OBJ_BLOB, target))
            self.entries.append(self._entry(rel, full, st, size=len(target)))
            return (go.MODE_LINK, name, oid)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            self.entries.append(self._entry(rel, full, st, rdev=rdev))
            return None
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self.entries.append(self._entry(rel, full, st))
            return None
        raise SourceError(f"{_show(rel)}: unsupported file type {stat.S_IFMT(mode):o}")

    def _entry(self, rel: bytes, full: bytes, st: os.stat_result, size=None,
               rdev=None, hardlink=None) -> mf.Entry:
        return mf.Entry(
            path=rel,
            kind=mf.IFMT_TO_KIND[stat.S_IFMT(st.st_mode)],
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            size=size,
            rdev=rdev,
            hardlink=hardlink,
            xattrs=_read_xattrs(full, rel),
        )

    def _file_blob(self, full: bytes, rel: bytes, st: os.stat_result) -> bytes:
        oid = self.cache.lookup(rel, st)
        if oid is not None and self.odb.exists(pygit2.Oid(raw=oid)):
            self.stats.files_from_cache += 1
            self.cache.remember(rel, st, oid)
            return oid
        try:
            with open(full, "rb") as f:
                if st.st_size > BIG_FILE:
                    # libgit2 streams a big file into the object store
                    # instead of holding it in memory twice.
                    oid = _raw(self.repo.create_blob_fromdisk(os.fsdecode(full)))
                else:
                    oid = _raw(self.odb.write(go.OBJ_BLOB, f.read()))
                after = os.fstat(f.fileno())
        except OSError as err:
            raise SourceError(f"{_show(rel)}: cannot read: {err.strerror}") from None
        except pygit2.GitError as err:
            raise SourceError(f"{_show(rel)}: cannot store: {err}") from None
        if after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns:
            raise SourceError(f"{_show(rel)}: changed while it was being read")
        self.stats.files_hashed += 1
        self.stats.bytes_hashed += st.st_size
        self.cache.remember(rel, st, oid)
        return oid


def _raw(oid: pygit2.Oid) -> bytes:
    return oid.raw


def commit_tree(repo: pygit2.Repository, tree: bytes, branch: str, message: str,
                signer: Optional["Signer"] = None) -> str:
    """Commit *tree* on top of *branch* (creating it) and move the branch."""
    ref_name = f"refs/heads/{branch}"
    if not pygit2.reference_is_valid_name(ref_name):
        raise RepositoryError(f"invalid branch name {branch!r}")
    parents = []
    try:
        parents.append(repo.references[ref_name].target)
    except KeyError:
        pass
    author = default_signature(repo, "AUTHOR")
    committer = default_signature(repo, "COMMITTER")
    tree_oid = pygit2.Oid(raw=tree)
    if not message.endswith("\n"):
        message += "\n"
    if signer is None:
        oid = repo.create_commit(None, author, committer, message, tree_oid, parents)
    else:
        payload = repo.create_commit_string(author, committer, message, tree_oid, parents)
        signature = signer(payload.encode("utf-8"))
        oid = repo.create_commit_with_signature(payload, signature.decode("ascii"))
    repo.create_reference_direct(ref_name, oid, True,
                                 message=f"gitroot commit: {message.splitlines()[0]}")
    if repo.head_is_unborn:
        repo.set_head(ref_name)
    return str(oid)


def import_directory(source: str, repo_path: str, branch: str, message: str,
                     signer: Optional["Signer"] = None) -> ImportResult:
    """``gitroot commit``: import *source* and commit it on *branch*."""
    repo = open_or_init_bare(repo_path)
    importer = Importer(repo, source)
    tree = importer.import_tree()
    commit = commit_tree(repo, tree, branch, message, signer)
    pack_loose_objects(repo.path, first=importer.metadata_objects)
    return ImportResult(commit=commit, tree=tree.hex(), stats=importer.stats)


def pack_loose_objects(repo_path: str, first: Sequence[bytes] = ()) -> bool:
    """Move the loose objects into new packs without deltas; False if that failed.

    A mount reads a pack much faster from a cold disk than thousands of loose
    object files, and without deltas a blob is one zlib stream, as fast to
    read as a loose one (docs/performance.md).  The objects in *first*
    (trees and the manifest) get a small pack of their own, so that a cold
    directory walk reads one compact file instead of trees scattered between
    blobs.  ``git pack-objects`` and ``git repack`` write a pack completely
    before anything is deleted, so an interruption leaves the repository as
    it was; on any failure the objects simply stay loose, which is slower
    but just as correct.
    """
    import shutil
    import subprocess

    git = shutil.which("git")
    if git is None:
        log.warning("git is not installed: objects stay loose (slower mounts)")
        return False
    commands = []
    if first:
        # --incremental: trees an earlier release already packed stay where they are.
        commands.append(([git, "--git-dir", repo_path, "pack-objects", "-q", "--incremental",
                          "--window=0", "--depth=0",
                          os.path.join(repo_path, "objects", "pack", "pack")],
                         b"".join(oid.hex().encode() + b"\n" for oid in first)))
    # Without -a: only the loose objects this import wrote go into a new
    # pack, so a second import of a slightly changed tree stays fast instead
    # of rewriting every release's objects (run `git gc` now and then).
    commands.append(([git, "--git-dir", repo_path, "repack", "-d", "-q",
                      "--window=0", "--depth=0"], b""))
    for cmd, stdin in commands:
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True)
        except OSError as err:
            log.warning("git failed to start: %s; objects stay loose", err)
            return False
        if proc.returncode != 0:
            log.warning("git %s failed (%d): %s; objects stay loose", cmd[3],
                        proc.returncode, proc.stderr.decode(errors="replace").strip()[-500:])
            return False
    return True
