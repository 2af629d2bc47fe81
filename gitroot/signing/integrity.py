"""``verify --full``: every object under a commit is present and hashes to its id.

A signature covers a commit id; the commit id covers its tree id, and so on
down, but only if each object really hashes to the id it is stored under.
This walk reads every object's raw bytes from the object database and
hashes ``b"<type> <size>\\0" + data`` itself rather than trusting the
library's own check, so a flipped bit in a pack or a replaced loose object
is found before the tree is served.  Submodule (gitlink) entries name
commits of another repository and are not followed.

Single-threaded; holds nothing between calls.
"""

import zlib
from typing import List, Set, Tuple

import pygit2

from gitroot.git import objects as go
from gitroot.errors import CorruptObjectError

_EXPECTED = {go.MODE_TREE: go.OBJ_TREE, go.MODE_BLOB: go.OBJ_BLOB,
             go.MODE_EXEC: go.OBJ_BLOB, go.MODE_LINK: go.OBJ_BLOB}


def read_checked(repo: pygit2.Repository, oid: bytes, expected_type: int,
                 where: str) -> bytes:
    """The raw data of object *oid*, after checking its type and hash.

    *where* names the object for the error message (a path, "commit ...").
    """
    hex_id = oid.hex()
    try:
        type_num, data = repo.odb.read(pygit2.Oid(raw=oid))[:2]
    except KeyError:
        raise CorruptObjectError(f"{where}: object {hex_id} is missing") from None
    except (pygit2.GitError, ValueError, zlib.error) as err:
        raise CorruptObjectError(f"{where}: object {hex_id} cannot be read: "
                                 f"{str(err).strip()}") from None
    type_num = int(type_num)
    if type_num not in go.TYPE_NAMES:
        raise CorruptObjectError(f"{where}: object {hex_id} has unknown type {type_num}")
    actual = go.object_id(type_num, data)
    if actual != oid:
        raise CorruptObjectError(f"{where}: object {hex_id} is corrupt: its content "
                                 f"hashes to {actual.hex()}")
    if type_num != expected_type:
        raise CorruptObjectError(
            f"{where}: object {hex_id} is a {go.TYPE_NAMES[type_num].decode()}, "
            f"expected a {go.TYPE_NAMES[expected_type].decode()}")
    return data


def verify_commit_objects(repo: pygit2.Repository, commit_id: str) -> int:
    """Check the commit and every tree and blob reachable from its tree.

    Returns the number of distinct objects checked; raises
    :class:`~gitroot.errors.CorruptObjectError` naming the first bad path
    (depth first, in tree order).  Parent commits are not walked: a release
    is its tree, and history may be shallow.
    """
    commit_oid = bytes.fromhex(commit_id)
    data = read_checked(repo, commit_oid, go.OBJ_COMMIT, f"commit {commit_id}")
    first = data.split(b"\n", 1)[0]
    if not first.startswith(b"tree ") or len(first) != 45:
        raise CorruptObjectError(f"commit {commit_id}: no tree header")
    try:
        root = bytes.fromhex(first[5:].decode("ascii"))
    except ValueError:
        raise CorruptObjectError(f"commit {commit_id}: malformed tree id") from None

    seen: Set[bytes] = {commit_oid}
    stack: List[Tuple[bytes, bytes, int]] = [(b"/", root, go.OBJ_TREE)]
    while stack:
        path, oid, expected = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        where = path.decode("utf-8", "backslashreplace")
        data = read_checked(repo, oid, expected, where)
        if expected != go.OBJ_TREE:
            continue
        try:
            items = go.parse_tree(data)
        except go.TreeFormatError as err:
            raise CorruptObjectError(f"{where}: tree {oid.hex()} is malformed: {err}") from None
        prefix = path if path.endswith(b"/") else path + b"/"
        children = []
        for item in items:
            if item.mode == go.MODE_GITLINK:
                continue
            if item.mode not in _EXPECTED:
                raise CorruptObjectError(f"{where}: entry {item.name!r} has invalid mode "
                                         f"{item.mode:o}")
            children.append((prefix + item.name, item.oid, _EXPECTED[item.mode]))
        stack.extend(reversed(children))     # pop() then yields tree order
    return len(seen)
