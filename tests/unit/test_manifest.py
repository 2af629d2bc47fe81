"""Pure tests of the manifest format (no git, no FUSE)."""

import pytest

from gitroot.git import manifest as mf
from gitroot.errors import ManifestError

ROOT = mf.Entry(b".", "d", 0o755, 0, 0, 1_700_000_000_000_000_000)


def entries():
    return [
        ROOT,
        mf.Entry(b"bin", "d", 0o755, 0, 0, 5),
        mf.Entry(b"bin/su", "f", 0o4755, 0, 0, 1_600_000_000_123_456_789, size=10),
        mf.Entry(b"bin/sux", "f", 0o4755, 0, 0, 1_600_000_000_123_456_789, size=10,
                 hardlink=b"bin/su"),
        mf.Entry(b"bin/ping", "f", 0o755, 0, 0, 1, size=3,
                 xattrs=((b"security.capability", b"\x01\x00\x00\x02"),
                         (b"user.x", b"\x00\xff"))),
        mf.Entry(b"dev", "d", 0o755, 0, 0, 2),
        mf.Entry(b"dev/null", "c", 0o666, 0, 0, 2, rdev=(1, 3)),
        mf.Entry(b"dev/sda", "b", 0o660, 0, 6, 2, rdev=(8, 0)),
        mf.Entry(b"run", "d", 0o755, 0, 0, 2),
        mf.Entry(b"run/fifo", "p", 0o600, 0, 0, 2),
        mf.Entry(b"run/sock", "s", 0o777, 0, 0, 2),
        mf.Entry(b"tmp", "d", 0o1777, 0, 0, -1_000_000_001),
        mf.Entry(b"home", "d", 0o755, 1000, 1000, 7),
        mf.Entry(b"home/l\xe9 x\t%\n", "l", 0o777, 1000, 1000, 7, size=4),
    ]


def test_round_trip_keeps_every_field():
    data = mf.format_manifest(entries())
    man = mf.parse_manifest(data, strict=True)
    assert list(man.entries.values()) == sorted(entries(), key=lambda e: mf.sort_key(e.path))
    assert not man.rejected


def test_format_is_canonical_and_depth_first():
    data = mf.format_manifest(reversed(entries()))
    assert data == mf.format_manifest(entries())
    paths = [line.split(b"\t")[0] for line in data.splitlines()[1:]]
    assert paths.index(b"bin/sux") < paths.index(b"dev")   # bin's subtree before dev
    assert data.isascii()


def test_inodes_are_positions_and_hardlinks_share_them():
    man = mf.parse_manifest(mf.format_manifest(entries()))
    assert man.inode[b"."] == 1
    assert man.inode[b"bin"] == 2
    assert man.inode[b"bin/sux"] == man.inode[b"bin/su"]
    assert man.nlink[man.inode[b"bin/su"]] == 2
    assert len(set(man.inode.values())) == len(man.inode) - 1
    assert sorted(man.children[b"."]) == [b"bin", b"dev", b"home", b"run", b"tmp"]
    assert man.subdirs[b"."] == 5


@pytest.mark.parametrize("raw", [
    b"", b"a", b"a/b", b"sp ace", b"tab\tnl\n", b"pct%", b"\xff\xfe", b"\x00x", b"%41",
])
def test_escape_round_trip(raw):
    esc = mf.escape_path(raw)
    assert b"\t" not in esc and b"\n" not in esc and b" " not in esc
    assert mf.unescape_path(esc) == raw


BAD_LINES = [
    (b"x\tf\t644\t0\t0\t1.000000000", "fields"),
    (b"x\tq\t644\t0\t0\t1.000000000\t1", "unknown kind"),
    (b"x\tf\t9644\t0\t0\t1.000000000\t1", "octal"),
    (b"x\tf\t17777\t0\t0\t1.000000000\t1", "beyond 07777"),
    (b"x\tf\t644\t-1\t0\t1.000000000\t1", "uid"),
    (b"x\tf\t644\t0\t4294967295\t1.000000000\t1", "gid"),
    (b"x\tf\t644\t0\t0\t1.5\t1", "mtime"),
    (b"x\tf\t644\t0\t0\t1.000000000\t-", "needs a size"),
    (b"x\tc\t644\t0\t0\t1.000000000\t-", "rdev"),
    (b"x\tp\t644\t0\t0\t1.000000000\t5", "has no size"),
    (b"x\tf\t644\t0\t0\t1.000000000\t1\txattr.user.a=%%%", "base64"),
    (b"x\tf\t644\t0\t0\t1.000000000\t1\txattr.evil.a=AA==", "xattr name"),
    (b"x\tf\t644\t0\t0\t1.000000000\t1\tcolor=red", "unknown"),
    (b"..\tf\t644\t0\t0\t1.000000000\t1", "'..'"),
    (b"a/../../etc\tf\t644\t0\t0\t1.000000000\t1", "'..'"),
    (b"/etc\tf\t644\t0\t0\t1.000000000\t1", "relative"),
    (b"a//b\tf\t644\t0\t0\t1.000000000\t1", "empty"),
    (b"x%2\tf\t644\t0\t0\t1.000000000\t1", "escape"),
    (b"x\td\t755\t0\t0\t1.000000000\t-\thardlink=y", "hardlinks"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES)
def test_bad_lines_are_rejected_with_a_reason(line, reason):
    with pytest.raises(ValueError, match=reason):
        mf.parse_line(line)


@pytest.mark.parametrize("line,reason", BAD_LINES)
def test_bad_line_poisons_only_its_path(line, reason):
    data = mf.HEADER + b"\n.\td\t755\t0\t0\t1.000000000\t-\n" + line + b"\n" \
        + b"zz\tf\t644\t0\t0\t1.000000000\t1\n"
    man = mf.parse_manifest(data)
    assert len(man.rejected) == 1
    assert b"zz" in man.entries
    with pytest.raises(ManifestError, match="line 3"):
        mf.parse_manifest(data, strict=True)


@pytest.mark.parametrize("data,reason", [
    (b"", "does not start"),
    (b"# gitroot manifest v2\n.\td\t755\t0\t0\t1.000000000\t-\n", "does not start"),
    (mf.HEADER + b"\n.\td\t755\t0\t0\t1.000000000\t-", "newline"),
    (mf.HEADER + b"\n", "no root"),
])
def test_bad_files_are_refused(data, reason):
    with pytest.raises(ManifestError, match=reason):
        mf.parse_manifest(data)


def test_structure_errors():
    root = b".\td\t755\t0\t0\t1.000000000\t-"
    cases = {
        "out of order": [root, b"b\tf\t644\t0\t0\t1.000000000\t1",
                         b"a\tf\t644\t0\t0\t1.000000000\t1"],
        "repeated": [root, b"a\tf\t644\t0\t0\t1.000000000\t1",
                     b"a\tf\t644\t0\t0\t1.000000000\t1"],
        "parent": [root, b"a/b\tf\t644\t0\t0\t1.000000000\t1"],
        "earlier regular file": [root, b"a\tf\t644\t0\t0\t1.000000000\t1\thardlink=b",
                                 b"b\tf\t644\t0\t0\t1.000000000\t1"],
        "metadata differs": [root, b"a\tf\t644\t0\t0\t1.000000000\t1",
                             b"b\tf\t600\t0\t0\t1.000000000\t1\thardlink=a"],
        "first entry": [b"a\td\t755\t0\t0\t1.000000000\t-"],
    }
    for reason, lines in cases.items():
        data = mf.HEADER + b"\n" + b"\n".join(lines) + b"\n"
        with pytest.raises(ManifestError, match=reason):
            mf.parse_manifest(data, strict=True)


def _manifest(*lines: bytes) -> bytes:
    return mf.HEADER + b"\n" + b"\n".join(lines) + b"\n"


ROOT_LINE = b".\td\t755\t0\t0\t1.000000000\t-"


def test_index_parses_a_directory_only_when_it_is_listed():
    data = _manifest(ROOT_LINE,
                     b"a\td\t755\t0\t0\t1.000000000\t-",
                     b"a/bad\tf\t999\t0\t0\t1.000000000\t1",
                     b"a/good\tf\t644\t0\t0\t1.000000000\t1",
                     b"b\td\t755\t0\t0\t1.000000000\t-")
    reported = []
    index = mf.ManifestIndex(data, on_reject=lambda n, why: reported.append((n, why)))
    assert reported == []                       # line 4 not read yet
    names = [(name, type(verdict).__name__, ino) for name, verdict, ino in index.listing(b".")]
    assert names == [(b"a", "Entry", 2), (b"b", "Entry", 5)]
    assert reported == []
    listed = {name: verdict for name, verdict, _ in index.listing(b"a")}
    assert reported == [(4, "mode is not octal")]
    assert listed[b"bad"] == "manifest line 4: mode is not octal"
    assert listed[b"good"].size == 1
    index.listing(b"a")
    assert len(reported) == 1                   # once per line


def test_index_counts_hardlinks_across_directories_and_subdirectories():
    data = _manifest(ROOT_LINE,
                     b"a\td\t755\t0\t0\t1.000000000\t-",
                     b"a/f\tf\t644\t0\t0\t1.000000000\t1",
                     b"a/s\td\t755\t0\t0\t1.000000000\t-",
                     b"b\td\t755\t0\t0\t1.000000000\t-",
                     b"b/g\tf\t644\t0\t0\t1.000000000\t1\thardlink=a/f",
                     b"b/h\tf\t600\t0\t0\t1.000000000\t1\thardlink=a/f")
    index = mf.ManifestIndex(data)
    listed = {name: (verdict, ino) for name, verdict, ino in index.listing(b"b")}
    assert listed[b"g"][1] == 3                 # a/f's inode (line 4)
    assert "differs" in listed[b"h"][0]
    assert index.nlink(3) == 2                  # a/f and b/g, not b/h
    assert index.subdirs(b".") == 2 and index.subdirs(b"a") == 1
    assert index.subdirs(b"b") == 0


def test_inode_is_the_line_number_minus_one_even_after_a_rejected_line():
    data = _manifest(ROOT_LINE,
                     b"b\tf\t644\t0\t0\t1.000000000\t1",
                     b"a\tf\t644\t0\t0\t1.000000000\t1",      # out of order
                     b"c\tf\t644\t0\t0\t1.000000000\t1")
    man = mf.parse_manifest(data)
    assert man.inode == {b".": 1, b"b": 2, b"c": 4}
    assert man.rejected == [(4, "entries out of order or repeated")]


def test_a_deep_tree_costs_no_deep_recursion():
    depth = 1200                    # beyond Python's default recursion limit (1000)
    lines = [ROOT_LINE]
    path = b""
    for _ in range(depth):
        path = path + b"/d" if path else b"d"
        lines.append(path + b"\td\t755\t0\t0\t1.000000000\t-")
    lines.append(path + b"/leaf\tf\t644\t0\t0\t1.000000000\t1")
    data = _manifest(*lines)
    index = mf.ManifestIndex(data)
    assert index.directory(path).kind == "d"          # every ancestor checked, no recursion
    assert [name for name, _, _ in index.listing(path)] == [b"leaf"]
    man = mf.parse_manifest(data, strict=True)
    assert len(man) == depth + 2


HOSTILE = _manifest(ROOT_LINE,
                    b"a\td\t755\t0\t0\t1.000000000\t-",
                    b"a/bad\tf\t999\t0\t0\t1.000000000\t1",          # mode not octal
                    b"a/f\tf\t644\t0\t0\t1.000000000\t1",
                    b"a/s\td\t755\t0\t0\t1.000000000\t-",
                    b"a/s/deep\tf\t644\t0\t0\t1.000000000\t1",
                    b"a/s/deep2\tl\t777\t0\t0\t1.000000000\t4",
                    b"a/t\tf\t644\t0\t0\t1.000000000\t1",
                    b"a/s/late\tf\t644\t0\t0\t1.000000000\t1",      # out of order
                    b"b\td\t7777777\t0\t0\t1.000000000\t-",          # rejected directory
                    b"b/under\tf\t644\t0\t0\t1.000000000\t1",        # below it
                    b"c\td\t755\t0\t0\t1.000000000\t-",
                    b"c/g\tf\t644\t0\t0\t1.000000000\t1\thardlink=a/f",
                    b"c/h\tf\t600\t0\t0\t1.000000000\t1\thardlink=a/f",
                    b"c/x%zz\tf\t644\t0\t0\t1.000000000\t1",         # unreadable path
                    b"c/y\tf\t644\t0\t0\t1.000000000\t1",
                    b"d\tf\t644\t0\t0\t1.000000000\t1")


@pytest.mark.parametrize("order", [(b".", b"a", b"a/s", b"b", b"c"),       # a walk
                                   (b"c", b"a/s", b"b", b"a", b".")])      # no parent first
def test_parse_all_and_kept_ranges_list_what_a_lazy_listing_does(order):
    """parse_all at mount, and the subtree ranges a parent's listing keeps
    for its children, change when lines are read, never what they say."""
    def listings(index, paths):
        return {path: index.listing(path) for path in paths}
    lazy_reported, ahead_reported = [], []
    lazy = mf.ManifestIndex(HOSTILE, on_reject=lambda n, why: lazy_reported.append(n))
    expected = listings(lazy, order)
    ahead = mf.ManifestIndex(HOSTILE, on_reject=lambda n, why: ahead_reported.append(n))
    ahead.parse_all()
    assert sorted(ahead_reported) == [4, 10, 11, 15, 16]   # b/under: by b's own listing
    assert listings(ahead, order) == expected
    assert ahead.listing(b"b") == expected[b"b"]          # handed out once, then made again
    assert sorted(ahead_reported) == sorted(lazy_reported) == [4, 10, 11, 12, 15, 16]
    assert ahead.nlink(4) == lazy.nlink(4) == 2
    assert dict((n, v) for n, v, _ in expected[b"a"])[b"s"].kind == "d"
    assert [(n, isinstance(v, str)) for n, v, _ in expected[b"a/s"]] == [
        (b"deep", False), (b"deep2", False), (b"late", True)]   # out of order: an I/O error
