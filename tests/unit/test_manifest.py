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
