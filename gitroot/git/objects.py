"""Raw git objects as bytes: tree parsing and building, object hashing.

gitroot reads trees itself instead of through pygit2's TreeEntry, because a
root filesystem has names that are not UTF-8 and a hostile repository may hold
names no checkout would accept (``..``, ``a/b``, duplicates).  Parsing the raw
object keeps the exact bytes and lets the caller decide what to serve.

Pure functions; no shared state.
"""

import hashlib
from typing import List, NamedTuple, Tuple

# git's tree entry modes
MODE_TREE = 0o040000
MODE_BLOB = 0o100644
MODE_EXEC = 0o100755
MODE_LINK = 0o120000
MODE_GITLINK = 0o160000
VALID_MODES = frozenset((MODE_TREE, MODE_BLOB, MODE_EXEC, MODE_LINK, MODE_GITLINK))

# pygit2 object type numbers (GIT_OBJECT_*), stable across libgit2 versions
OBJ_COMMIT = 1
OBJ_TREE = 2
OBJ_BLOB = 3
OBJ_TAG = 4
TYPE_NAMES = {OBJ_COMMIT: b"commit", OBJ_TREE: b"tree", OBJ_BLOB: b"blob", OBJ_TAG: b"tag"}


#: the modes git writes, as it writes them: a dict lookup instead of an
#: octal check and int() per entry (a tree is parsed per directory listed)
_MODE_OF_TEXT = {b"%o" % mode: mode for mode in VALID_MODES}


class TreeItem(NamedTuple):
    mode: int
    name: bytes
    oid: bytes          # 20 raw bytes


#: TreeItem from a tuple without NamedTuple's keyword-handling __new__
_new_item = tuple.__new__


class TreeFormatError(ValueError):
    pass


def parse_tree(data: bytes) -> List[TreeItem]:
    """Split a raw tree object into items, exactly as stored.

    Raises TreeFormatError for a structurally broken tree.  Names are not
    judged here; see :func:`name_problem`.
    """
    items = []
    pos = 0
    end = len(data)
    while pos < end:
        space = data.find(b" ", pos, pos + 8)
        if space < 0:
            raise TreeFormatError("tree entry without a mode")
        mode_text = data[pos:space]
        mode = _MODE_OF_TEXT.get(mode_text)
        if mode is None:
            if not mode_text or mode_text.translate(None, b"01234567"):
                raise TreeFormatError("tree entry mode is not octal")
            mode = int(mode_text, 8)
        nul = data.find(b"\0", space + 1)
        if nul < 0 or nul + 21 > end:
            raise TreeFormatError("tree entry truncated")
        items.append(_new_item(TreeItem, (mode, data[space + 1:nul], data[nul + 1:nul + 21])))
        pos = nul + 21
    return items


#: Linux's NAME_MAX: the longest name a directory entry can have.
NAME_MAX = 255


def name_problem(name: bytes) -> str:
    """Why *name* cannot be a directory entry, or '' if it can."""
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return "name is '.' or '..'"
    if b"/" in name:
        return "name contains '/'"
    if b"\0" in name:
        return "name contains NUL"
    if name.lower() == b".git":
        return "name is '.git'"
    if len(name) > NAME_MAX:
        # the kernel refuses longer names, and one in a FUSE listing makes
        # the whole directory unlistable (EIO)
        return f"name longer than {NAME_MAX} bytes"
    return ""


def _tree_sort_key(item: Tuple[int, bytes, bytes]) -> bytes:
    mode, name, _ = item
    return name + b"/" if mode == MODE_TREE else name


def format_tree(items: List[Tuple[int, bytes, bytes]]) -> bytes:
    """A raw tree object from (mode, name, raw 20-byte oid) items, in git order."""
    return b"".join(b"%o %s\0%s" % (mode, name, oid)
                    for mode, name, oid in sorted(items, key=_tree_sort_key))


def object_id(type_num: int, data: bytes) -> bytes:
    """The raw SHA-1 object id git gives *data* of *type_num*."""
    h = hashlib.sha1(TYPE_NAMES[type_num] + b" %d\0" % len(data))
    h.update(data)
    return h.digest()
