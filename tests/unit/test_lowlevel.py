"""The low-level back end's pure parts: its nodeids and its mount options.

What it serves is tested through real mounts (tests/integration/test_mount.py
and the other tests that take the fuse_backend fixture run through it)."""

import pytest

from gitroot.serve.fusefs import find_libfuse3, mount_options
from gitroot.serve.vfs import DirNode, ErrorNode, Node, SpecialNode

try:
    find_libfuse3()
except ImportError:
    pytest.skip("libfuse 3 is not installed", allow_module_level=True)

from gitroot.serve import lowlevel  # noqa: E402 - needs libfuse 3


class _View:
    """The one attribute Session reads of a view at construction."""

    def __init__(self):
        self.root = DirNode(b".", None, (0o40755, 1, 2, 0, 0, 0, 0, 0))


def _file(ino, oid=b"\1" * 20, size=5, nlink=1):
    return Node(oid, (0o100644, ino, nlink, 0, 0, size, 0, 0))


def test_nodeids_are_inode_numbers_and_hardlinks_share_one():
    session = lowlevel.Session(_View(), None)
    a = _file(7, nlink=2)
    b = _file(7, nlink=2)            # another name of the same hardlink group
    assert session._nodeid(a, b"a") == 7
    assert session._nodeid(b, b"d/b") == 7
    assert session.nodes[7] == (a, b"a")
    assert session._nodeid(session.view.root, b".") == lowlevel.ROOT_ID


def test_a_node_that_reuses_another_s_inode_number_gets_its_own_nodeid():
    """Only a damaged manifest gives two different files one inode number;
    each must still be served as itself, under one nodeid per path."""
    session = lowlevel.Session(_View(), None)
    first = _file(9, oid=b"\1" * 20)
    other = _file(9, oid=b"\2" * 20)
    assert session._nodeid(first, b"x") == 9
    spare = session._nodeid(other, b"y")
    assert spare >= lowlevel.SPARE_IDS
    assert session.nodes[spare] == (other, b"y")
    assert session._nodeid(other, b"y") == spare
    # nor may any node take the root's nodeid
    assert session._nodeid(_file(lowlevel.ROOT_ID), b"z") >= lowlevel.SPARE_IDS


def test_only_the_kernel_s_mount_options_reach_libfuse():
    options = lowlevel._mount_options(mount_options(allow_other=True, suid=True))
    assert options.split(",") == ["ro", "default_permissions", "allow_other", "suid", "dev",
                                  "fsname=gitroot", "subtype=gitroot"]
    plain = lowlevel._mount_options(mount_options(allow_other=False))
    assert "allow_other" not in plain and "suid" not in plain and "dev" not in plain
    assert "timeout" not in plain and "kernel_cache" not in plain


def test_an_unknown_nodeid_is_stale():
    session = lowlevel.Session(_View(), None)
    with pytest.raises(OSError) as info:
        session._node(12345)
    assert info.value.errno == 116      # ESTALE


def _libfuse_records(session, ino, entries, size, offset):
    """What libfuse's own fuse_add_direntry_plus writes for the same
    listing (the helper the packed records replace), filled through
    _entry_of as before."""
    import ctypes
    _, path = session.nodes[ino]
    buf = ctypes.create_string_buffer(size)
    start, used = ctypes.addressof(buf), 0
    for position in range(offset, len(entries)):
        name, kid = entries[position]
        added = lowlevel._add_plus(None, start + used, size - used, name,
                                   session._entry_of(name, kid, path), position + 1)
        if added > size - used:
            break
        used += added
    return buf.raw[:used]


def test_packed_listing_records_are_libfuse_s_byte_for_byte():
    session = lowlevel.Session(_View(), None)
    sub = DirNode(b"d", None, (0o40755, 3, 2, 1000, 1000, 0, 0, -1_500_000_001))
    kids = [
        (b".", 1), (b"..", 1),
        (b"f", _file(2, size=123457)),
        (b"setuid-with-a-longer-name", Node(b"\3" * 20, (0o104755, 4, 3, 0, 42, 9,
                                                         0, 1_600_000_000_123_456_789))),
        (b"d", sub),
        (b"null", SpecialNode("c", (0o20666, 5, 1, 0, 0, 0, (1 << 8) | 3, 0))),
        (b"broken", ErrorNode("unservable")),
    ]
    for size, offset in ((4096, 0), (400, 0), (4096, 3), (4096, len(kids)), (100, 0)):
        fresh = lowlevel.Session(_View(), None)
        expected = _libfuse_records(fresh, lowlevel.ROOT_ID, kids, size, offset)
        got = session._direntplus(lowlevel.ROOT_ID, kids, size, offset)
        assert got == expected, (size, offset)
    # and the nodes listed are in the table, under their paths
    assert session.nodes[3] == (sub, b"d")
