"""Reading a release: typed objects and the manifest of a commit.

Shared by the view that serves a release (:mod:`gitroot.serve.vfs`) and the
device's diff, so both refuse the same damaged or crafted objects the same
way.  Boot path: pygit2 and the standard library only.
"""

from typing import Callable, Optional

import pygit2

from gitroot.errors import CorruptObjectError, ManifestError
from gitroot.git import manifest as mf
from gitroot.git import objects as go


def read_object(odb: pygit2.Odb, oid: bytes, want: int, what: str) -> bytes:
    """The bytes of object *oid*, which must be of type *want*."""
    try:
        type_num, data = odb.read(pygit2.Oid(raw=oid))
    except KeyError:
        raise CorruptObjectError(f"{what}: object {oid.hex()} is missing") from None
    except (pygit2.GitError, ValueError, OSError) as err:
        raise CorruptObjectError(f"{what}: object {oid.hex()} is unreadable: {err}") from None
    if type_num != want:
        raise CorruptObjectError(f"{what}: object {oid.hex()} is a "
                                 f"{go.TYPE_NAMES.get(type_num, b'?').decode()}, "
                                 f"expected a {go.TYPE_NAMES[want].decode()}")
    return data


def read_manifest_bytes(odb: pygit2.Odb, root_tree: bytes, where: str,
                        size_of: Optional[Callable[[bytes], Optional[int]]] = None) -> bytes:
    """The raw ``.gitroot/manifest`` of the release whose root tree is *root_tree*.

    *size_of(oid)*, when given, tells the manifest blob's size without
    inflating it (None: cannot tell); one beyond manifest.MAX_MANIFEST_BYTES
    is refused unread."""
    try:
        items = go.parse_tree(read_object(odb, root_tree, go.OBJ_TREE, where + " root tree"))
        meta = [i for i in items if i.name == mf.MANIFEST_DIR]
        if len(meta) != 1 or meta[0].mode != go.MODE_TREE:
            raise ManifestError(f"{where} has no gitroot manifest "
                                f"({mf.MANIFEST_PATH.decode()}); was it made by "
                                "'gitroot commit'?")
        inner = go.parse_tree(read_object(odb, meta[0].oid, go.OBJ_TREE, where))
        blobs = [i for i in inner if i.name == mf.MANIFEST_NAME]
        if len(blobs) != 1 or blobs[0].mode not in (go.MODE_BLOB, go.MODE_EXEC):
            raise ManifestError(f"{where} has no gitroot manifest "
                                f"({mf.MANIFEST_PATH.decode()})")
        size = size_of(blobs[0].oid) if size_of is not None else None
        if size is not None:
            mf.check_manifest_size(size)
        return read_object(odb, blobs[0].oid, go.OBJ_BLOB, where + " manifest")
    except go.TreeFormatError as err:
        raise ManifestError(f"{where}: corrupt root tree: {err}") from None
    except CorruptObjectError as err:
        raise ManifestError(str(err)) from None
