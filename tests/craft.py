"""Build hostile repositories byte by byte for the bad-input tests.

gitroot's own importer never writes these; an attacker's server could.
"""

import os
import struct
import zlib
from typing import List, Tuple

import pygit2

from gitroot.git import objects as go
from gitroot.git import manifest as mf


def blob(repo: pygit2.Repository, data: bytes) -> bytes:
    return repo.odb.write(go.OBJ_BLOB, data).raw


def tree(repo: pygit2.Repository, items: List[Tuple[int, bytes, bytes]],
         sort: bool = True) -> bytes:
    """A tree object; with sort=False the items are written as given
    (duplicates and all)."""
    if sort:
        data = go.format_tree(items)
    else:
        data = b"".join(b"%o %s\0%s" % it for it in items)
    return repo.odb.write(go.OBJ_TREE, data).raw


def with_manifest(repo, items, manifest_text: bytes) -> bytes:
    """A root tree holding *items* plus .gitroot/manifest = manifest_text."""
    man = tree(repo, [(go.MODE_BLOB, mf.MANIFEST_NAME, blob(repo, manifest_text))])
    return tree(repo, list(items) + [(go.MODE_TREE, mf.MANIFEST_DIR, man)], sort=True)


def commit(repo: pygit2.Repository, root_tree: bytes, branch: str = "main") -> str:
    # Written raw: libgit2 refuses to commit some of the trees built here.
    who = b"t <t@example.invalid> 1700000000 +0000"
    data = b"tree %s\nauthor %s\ncommitter %s\n\ncrafted\n" % (
        root_tree.hex().encode(), who, who)
    oid = repo.odb.write(go.OBJ_COMMIT, data)
    repo.create_reference_direct(f"refs/heads/{branch}", oid, True)
    return str(oid)


def manifest(*lines: bytes) -> bytes:
    """A manifest with the root line first and *lines* after it."""
    root = b".\td\t755\t0\t0\t1700000000.000000000\t-"
    return mf.HEADER + b"\n" + b"\n".join((root,) + lines) + b"\n"


def loose_path(repo: pygit2.Repository, oid_raw: bytes) -> str:
    h = oid_raw.hex()
    return os.path.join(repo.path, "objects", h[:2], h[2:])


def corrupt_loose_object(repo: pygit2.Repository, oid_raw: bytes, new_content: bytes,
                         type_name: bytes = b"blob") -> None:
    """Replace a loose object's bytes with a valid zlib stream of other content,
    so it reads fine but no longer hashes to its id."""
    path = loose_path(repo, oid_raw)
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(zlib.compress(type_name + b" %d\0" % len(new_content) + new_content))


def remove_loose_object(repo: pygit2.Repository, oid_raw: bytes) -> None:
    os.unlink(loose_path(repo, oid_raw))


def good_and_corrupt(path: str) -> Tuple[pygit2.Repository, str, bytes, bytes]:
    """A bare repository at *path* whose commit holds /f (b"hello") and /g,
    whose loose object no longer hashes to its id.  Returns (repo, commit,
    f's blob id, g's blob id)."""
    repo = pygit2.init_repository(path, bare=True)
    good = blob(repo, b"hello")
    bad = blob(repo, b"world")
    root = with_manifest(repo, [(go.MODE_BLOB, b"f", good), (go.MODE_BLOB, b"g", bad)],
                         manifest(b"f\tf\t644\t0\t0\t1.000000000\t5",
                                  b"g\tf\t644\t0\t0\t1.000000000\t5"))
    result = commit(repo, root)
    corrupt_loose_object(repo, bad, b"WORLD")
    return repo, result, good, bad


def elf_image(needed: List[bytes], runpath: bytes = b"", size: int = 0) -> bytes:
    """A minimal 64-bit little-endian ELF shared object naming *needed*
    (DT_NEEDED) and *runpath* (DT_RUNPATH): header, a PT_LOAD of the whole
    file at 0x400000 and a PT_DYNAMIC, the string table, the dynamic
    section, then zeros up to *size* bytes."""
    base = 0x400000
    strtab, offsets = b"\0", []
    for name in needed:
        offsets.append(len(strtab))
        strtab += name + b"\0"
    runpath_at = len(strtab)
    strtab += runpath + b"\0"
    strtab_at = 64 + 2 * 56
    dynamic_at = strtab_at + len(strtab) + (-len(strtab) % 8)
    dynamic = b"".join(struct.pack("<qQ", 1, at) for at in offsets)
    dynamic += struct.pack("<qQ", 5, base + strtab_at)
    if runpath:
        dynamic += struct.pack("<qQ", 29, runpath_at)
    dynamic += struct.pack("<qQ", 0, 0)
    total = max(size, dynamic_at + len(dynamic))
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    programs = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    programs += struct.pack("<IIQQQQQQ", 2, 6, dynamic_at, base + dynamic_at,
                            base + dynamic_at, len(dynamic), len(dynamic), 8)
    image = header + programs + strtab.ljust(dynamic_at - strtab_at, b"\0") + dynamic
    return image.ljust(total, b"\0")
