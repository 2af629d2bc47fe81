"""libgit2's object reader called through ctypes, so a second thread can use it.

pygit2 holds the GIL while libgit2 reads an object (inflating it and
checking its hash), so a thread reading with pygit2 stops every other
Python thread: two threads reading the blobs of the Debian root took
1.14 s against 1.17 s for one.  ctypes releases the GIL around every
foreign call, so a thread that reads through :class:`RawOdb` runs beside
the FUSE loop on another core (gitroot.serve.readahead).

It is the very library pygit2 loaded (found in /proc/self/maps), with the
same global settings: strict hash verification, on by default, and
libgit2's SHA-1 with collision detection.  A blob read here is checked
exactly as one read through pygit2.

Only what reading needs is bound, through functions whose signatures have
not changed since libgit2 0.28 (Debian 12 has 1.5, Debian 13 1.9, the
newest pygit2 wheels 1.9).  :func:`open_odb` reads one object both ways
before it hands out a reader, so a library whose ``git_oid`` is not 20
bytes (an experimental SHA-256 build) or that cannot be found gives None,
and the caller reads through pygit2 alone.

Threading: one RawOdb per thread (libgit2's rule for a git_odb in use).
"""

import ctypes
import logging
import os
from typing import Optional, Tuple

import pygit2

log = logging.getLogger(__name__)

_OID_SIZE = 20


def _library_path() -> Optional[str]:
    """The libgit2 shared object this process has loaded (pygit2's)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").partition("/")[2]
                if path and os.path.basename(path).startswith("libgit2") and ".so" in path:
                    return "/" + path
    except OSError:
        return None
    return None


def _bind(path: str):
    lib = ctypes.CDLL(path)
    vp = ctypes.c_void_p
    for name, restype, argtypes in (
            ("git_repository_open_ext", ctypes.c_int,
             [ctypes.POINTER(vp), ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p]),
            ("git_repository_odb", ctypes.c_int, [ctypes.POINTER(vp), vp]),
            ("git_repository_free", None, [vp]),
            ("git_odb_free", None, [vp]),
            ("git_odb_read", ctypes.c_int, [ctypes.POINTER(vp), vp, ctypes.c_char_p]),
            ("git_odb_object_data", vp, [vp]),
            ("git_odb_object_size", ctypes.c_size_t, [vp]),
            ("git_odb_object_type", ctypes.c_int, [vp]),
            ("git_odb_object_free", None, [vp])):
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
    return lib


class RawOdb:
    """One repository's object database, opened anew through libgit2."""

    def __init__(self, lib, repo_path: str):
        self._lib = lib
        self._path = repo_path
        self._repo = ctypes.c_void_p()
        self._odb = ctypes.c_void_p()
        # 1 = GIT_REPOSITORY_OPEN_NO_SEARCH, as gitroot.git.repository.open_repo
        if lib.git_repository_open_ext(ctypes.byref(self._repo), os.fsencode(repo_path),
                                       1, None) != 0:
            raise OSError(f"{repo_path}: libgit2 cannot open it")
        if lib.git_repository_odb(ctypes.byref(self._odb), self._repo) != 0:
            lib.git_repository_free(self._repo)
            raise OSError(f"{repo_path}: libgit2 cannot open its objects")

    def another(self) -> "RawOdb":
        """One more reader of the same repository, through the same library
        (for another thread; :func:`open_odb` has checked it once)."""
        return RawOdb(self._lib, self._path)

    def read(self, oid: bytes) -> Optional[Tuple[int, bytes]]:
        """(type, bytes) of object *oid* (20 raw bytes), or None if libgit2
        cannot read it (missing, corrupt, not hashing to its id)."""
        lib = self._lib
        obj = ctypes.c_void_p()
        if len(oid) != _OID_SIZE or lib.git_odb_read(ctypes.byref(obj), self._odb, oid) != 0:
            return None
        try:
            size = lib.git_odb_object_size(obj)
            data = ctypes.string_at(lib.git_odb_object_data(obj), size) if size else b""
            return lib.git_odb_object_type(obj), data
        finally:
            lib.git_odb_object_free(obj)

    def close(self) -> None:
        if self._odb:
            self._lib.git_odb_free(self._odb)
            self._odb = ctypes.c_void_p()
        if self._repo:
            self._lib.git_repository_free(self._repo)
            self._repo = ctypes.c_void_p()


def open_odb(repo: pygit2.Repository, probe: bytes) -> Optional[RawOdb]:
    """A RawOdb of *repo*, or None when libgit2 cannot be used this way here.

    *probe* names an object of *repo* (e.g. the mounted commit); it is read
    both through pygit2 and through ctypes, and must come out the same."""
    path = _library_path()
    if path is None:
        log.debug("no libgit2 in this process's maps: reading through pygit2 only")
        return None
    try:
        raw = RawOdb(_bind(path), repo.path)
    except (OSError, AttributeError) as err:
        log.debug("libgit2 through ctypes (%s): %s", path, err)
        return None
    try:
        expected = repo.odb.read(pygit2.Oid(raw=probe))
    except (KeyError, ValueError, pygit2.GitError):
        expected = None
    got = raw.read(probe)
    if expected is None or got is None or (got[0], got[1]) != (expected[0], expected[1]):
        log.debug("libgit2 through ctypes (%s) reads %s differently: not used",
                  path, probe.hex())
        raw.close()
        return None
    return raw
