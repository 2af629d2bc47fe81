"""The three-way /etc merge on directory fixtures: every rule row, metadata,
symlinks, binaries, the line merge (checked against ``git merge-file``) and
hostile trees that try to make the merge write outside its output."""

import os
import shutil
import stat
import subprocess

import pytest

from gitroot.boot.etcmerge import MergeError, copy_tree, merge_lines, merge_trees, scan

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="chown to other owners needs root")

PASSWD = b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n" \
         b"bin:x:2:2::/bin:/usr/sbin/nologin\nsys:x:3:3::/dev:/usr/sbin/nologin\n" \
         b"sync:x:4:65534::/bin:/bin/sync\ngames:x:5:60::/usr/games:/usr/sbin/nologin\n"


def make(root, spec):
    """spec: path -> bytes (file), ("link", target), ("dir",), ("fifo",)."""
    os.makedirs(root, exist_ok=True)
    for path, what in sorted(spec.items()):
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if isinstance(what, bytes):
            with open(full, "wb") as f:
                f.write(what)
        elif what[0] == "link":
            os.symlink(what[1], full)
        elif what[0] == "dir":
            os.makedirs(full, exist_ok=True)
        elif what[0] == "fifo":
            os.mkfifo(full)
    return str(root)


def three(tmp_path, base, local=None, new=None):
    """base spec, and local/new as copies of it with changes applied by callables."""
    b = make(tmp_path / "base", base)
    trees = [b]
    for name, change in (("local", local), ("new", new)):
        path = str(tmp_path / name)
        subprocess.run(["cp", "-a", b, path], check=True)
        if change:
            change(path)
        trees.append(path)
    return trees


def merged(tmp_path, base, local=None, new=None):
    b, l_, n = three(tmp_path, base, local, new)
    out = str(tmp_path / "out")
    result = merge_trees(b, l_, n, out)
    return out, result


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


BASE = {"passwd": PASSWD, "hostname": b"debian\n", "motd": b"hello\n",
        "default/grub": b"GRUB_TIMEOUT=5\n", "localtime": ("link", "/usr/share/zoneinfo/UTC"),
        "ld.so.cache": b"\0\1binary\0" * 10}


# -- the rule rows -----------------------------------------------------------------

def test_unchanged_on_the_device_takes_the_release(tmp_path):
    out, result = merged(tmp_path, BASE,
                         new=lambda d: write(f"{d}/motd", b"welcome to release 2\n"))
    assert read(f"{out}/motd") == b"welcome to release 2\n"
    assert read(f"{out}/hostname") == b"debian\n"
    assert result.conflicts == []


def test_changed_on_the_device_only_is_kept(tmp_path):
    out, result = merged(tmp_path, BASE,
                         local=lambda d: write(f"{d}/hostname", b"kitchen\n"),
                         new=lambda d: write(f"{d}/motd", b"release 2\n"))
    assert read(f"{out}/hostname") == b"kitchen\n"
    assert read(f"{out}/motd") == b"release 2\n"
    assert result.conflicts == []


def test_the_same_change_on_both_sides_is_no_conflict(tmp_path):
    change = lambda d: write(f"{d}/hostname", b"same\n")  # noqa: E731
    out, result = merged(tmp_path, BASE, local=change, new=change)
    assert read(f"{out}/hostname") == b"same\n"
    assert result.conflicts == []


def test_text_changed_on_both_sides_merges_cleanly(tmp_path):
    def local(d):
        write(f"{d}/passwd", PASSWD + b"alice:x:1000:1000::/home/alice:/bin/bash\n")

    def new(d):
        write(f"{d}/passwd", PASSWD.replace(b"bin:x:2:2::", b"bin:x:2:2:Binaries:"))

    out, result = merged(tmp_path, BASE, local=local, new=new)
    text = read(f"{out}/passwd")
    assert b"alice:x:1000" in text and b"bin:x:2:2:Binaries:" in text
    assert result.conflicts == [] and result.merged_text == ["passwd"]
    assert not os.path.exists(f"{out}/passwd.rej")


def test_overlapping_text_changes_keep_local_with_rej_and_orig(tmp_path):
    out, result = merged(tmp_path, BASE,
                         local=lambda d: write(f"{d}/default/grub", b"GRUB_TIMEOUT=1\n"),
                         new=lambda d: write(f"{d}/default/grub", b"GRUB_TIMEOUT=10\n"))
    assert read(f"{out}/default/grub") == b"GRUB_TIMEOUT=1\n"
    assert read(f"{out}/default/grub.rej") == b"GRUB_TIMEOUT=10\n"
    assert read(f"{out}/default/grub.orig") == b"GRUB_TIMEOUT=5\n"
    (conflict,) = result.conflicts
    assert conflict.path == "default/grub"
    assert conflict.reject == "default/grub.rej" and conflict.original == "default/grub.orig"
    assert "overlapping" in conflict.reason


def test_binary_files_are_compared_as_wholes(tmp_path):
    # one byte apart, far from each other: a line merge would succeed, but a
    # file with a NUL byte is never merged line by line
    out, result = merged(tmp_path, BASE,
                         local=lambda d: write(f"{d}/ld.so.cache", b"L" + BASE["ld.so.cache"][1:]),
                         new=lambda d: write(f"{d}/ld.so.cache", BASE["ld.so.cache"][:-1] + b"N"))
    assert read(f"{out}/ld.so.cache")[0:1] == b"L"
    assert read(f"{out}/ld.so.cache.rej")[-1:] == b"N"
    assert read(f"{out}/ld.so.cache.orig") == BASE["ld.so.cache"]
    assert [c.reason for c in result.conflicts] == ["binary file changed on both sides"]


def test_binary_file_changed_on_one_side_takes_that_side(tmp_path):
    out, result = merged(tmp_path, BASE, new=lambda d: write(f"{d}/ld.so.cache", b"\0new"))
    assert read(f"{out}/ld.so.cache") == b"\0new"
    assert result.conflicts == []


def _relink(path, target):
    os.unlink(path)
    os.symlink(target, path)


def test_symlinks_are_compared_as_wholes(tmp_path):
    out, result = merged(tmp_path, BASE,
                         local=lambda d: _relink(f"{d}/localtime", "/usr/share/zoneinfo/Europe/Paris"),
                         new=lambda d: _relink(f"{d}/localtime", "/usr/share/zoneinfo/Etc/UTC"))
    assert os.readlink(f"{out}/localtime") == "/usr/share/zoneinfo/Europe/Paris"
    assert os.readlink(f"{out}/localtime.rej") == "/usr/share/zoneinfo/Etc/UTC"
    assert os.readlink(f"{out}/localtime.orig") == "/usr/share/zoneinfo/UTC"
    assert [c.path for c in result.conflicts] == ["localtime"]


def test_symlink_changed_in_the_release_only(tmp_path):
    out, result = merged(tmp_path, BASE,
                         new=lambda d: _relink(f"{d}/localtime", "/usr/share/zoneinfo/Etc/UTC"))
    assert os.readlink(f"{out}/localtime") == "/usr/share/zoneinfo/Etc/UTC"
    assert result.conflicts == []


def test_device_deletions_stay_deleted(tmp_path):
    out, result = merged(tmp_path, BASE, local=lambda d: os.unlink(f"{d}/motd"))
    assert not os.path.lexists(f"{out}/motd")
    assert result.conflicts == []


def test_device_deletion_of_a_file_the_release_changed_stays_deleted_and_is_recorded(tmp_path):
    out, result = merged(tmp_path, BASE, local=lambda d: os.unlink(f"{d}/motd"),
                         new=lambda d: write(f"{d}/motd", b"new motd\n"))
    assert not os.path.lexists(f"{out}/motd")
    assert read(f"{out}/motd.rej") == b"new motd\n"
    assert read(f"{out}/motd.orig") == b"hello\n"
    assert [(c.path, c.reason) for c in result.conflicts] == [
        ("motd", "removed on the device, changed in the release")]


def test_release_deletions(tmp_path):
    def local(d):
        write(f"{d}/hostname", b"mine\n")

    def new(d):
        os.unlink(f"{d}/hostname")
        os.unlink(f"{d}/motd")

    out, result = merged(tmp_path, BASE, local=local, new=new)
    assert not os.path.lexists(f"{out}/motd")           # untouched on the device: removed
    assert read(f"{out}/hostname") == b"mine\n"          # changed on the device: kept
    assert read(f"{out}/hostname.orig") == b"debian\n"
    assert not os.path.lexists(f"{out}/hostname.rej")
    assert [c.reason for c in result.conflicts] == [
        "changed on the device, removed from the release"]


def test_additions_from_both_sides(tmp_path):
    out, result = merged(tmp_path, BASE,
                         local=lambda d: make(d, {"ssh/authorized": b"key\n"}),
                         new=lambda d: make(d, {"cron.d/new": b"* * * * * true\n"}))
    assert read(f"{out}/ssh/authorized") == b"key\n"
    assert read(f"{out}/cron.d/new") == b"* * * * * true\n"
    assert result.conflicts == []


def test_added_on_both_sides_differently_is_a_conflict_without_orig(tmp_path):
    out, result = merged(tmp_path, BASE, local=lambda d: make(d, {"added": b"device\n"}),
                         new=lambda d: make(d, {"added": b"release\n"}))
    assert read(f"{out}/added") == b"device\n"
    assert read(f"{out}/added.rej") == b"release\n"
    assert not os.path.lexists(f"{out}/added.orig")
    assert [c.reason for c in result.conflicts] == ["added on both sides, differently"]


def test_a_directory_the_device_removed_stays_removed(tmp_path):
    out, result = merged(tmp_path, BASE, local=lambda d: shutil.rmtree(f"{d}/default"),
                         new=lambda d: write(f"{d}/default/grub", b"GRUB_TIMEOUT=9\n"))
    assert not os.path.lexists(f"{out}/default")
    assert [c.path for c in result.conflicts] == ["default/grub"]


# -- metadata ----------------------------------------------------------------------

def test_device_mode_and_release_content_both_survive(tmp_path):
    out, result = merged(tmp_path, BASE, local=lambda d: os.chmod(f"{d}/motd", 0o600),
                         new=lambda d: write(f"{d}/motd", b"release 2\n"))
    assert read(f"{out}/motd") == b"release 2\n"
    assert stat.S_IMODE(os.lstat(f"{out}/motd").st_mode) == 0o600
    assert result.conflicts == []


@needs_root
def test_release_owner_and_device_content_both_survive(tmp_path):
    out, result = merged(tmp_path, BASE, local=lambda d: write(f"{d}/motd", b"mine\n"),
                         new=lambda d: os.chown(f"{d}/motd", 0, 42))
    assert read(f"{out}/motd") == b"mine\n"
    assert os.lstat(f"{out}/motd").st_gid == 42
    assert result.conflicts == []


def test_metadata_only_change_in_the_release(tmp_path):
    out, result = merged(tmp_path, BASE, new=lambda d: os.chmod(f"{d}/hostname", 0o640))
    assert stat.S_IMODE(os.lstat(f"{out}/hostname").st_mode) == 0o640
    assert result.conflicts == []


def test_mode_changed_differently_on_both_sides_is_a_conflict(tmp_path):
    out, result = merged(tmp_path, BASE, local=lambda d: os.chmod(f"{d}/hostname", 0o600),
                         new=lambda d: os.chmod(f"{d}/hostname", 0o640))
    assert stat.S_IMODE(os.lstat(f"{out}/hostname").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(f"{out}/hostname.rej").st_mode) == 0o640
    assert [c.reason for c in result.conflicts] == ["metadata changed on both sides"]


def test_xattrs_merge_name_by_name(tmp_path):
    def local(d):
        os.setxattr(f"{d}/motd", "user.device", b"1")

    def new(d):
        os.setxattr(f"{d}/motd", "user.release", b"2")
        os.setxattr(f"{d}/motd", "user.shared", b"new")

    out, result = merged(tmp_path, {**BASE}, local=local, new=new)
    assert os.getxattr(f"{out}/motd", "user.device") == b"1"
    assert os.getxattr(f"{out}/motd", "user.release") == b"2"
    assert result.conflicts == []


def test_setuid_bit_survives_a_merge(tmp_path):
    def both(d):
        os.chmod(f"{d}/hostname", 0o4755)
    out, _ = merged(tmp_path, BASE, new=both)
    assert stat.S_IMODE(os.lstat(f"{out}/hostname").st_mode) == 0o4755


def test_directory_modes_merge(tmp_path):
    out, result = merged(tmp_path, BASE, local=lambda d: os.chmod(f"{d}/default", 0o700))
    assert stat.S_IMODE(os.lstat(f"{out}/default").st_mode) == 0o700
    assert result.conflicts == []


def test_copy_tree_keeps_everything(tmp_path):
    src = make(tmp_path / "src", {**BASE, "fifo": ("fifo",), "empty": ("dir",)})
    os.chmod(f"{src}/motd", 0o4711)
    os.setxattr(f"{src}/hostname", "user.x", b"y")
    os.utime(f"{src}/hostname", ns=(1, 123456789))
    copy_tree(src, str(tmp_path / "copy"))
    assert scan(src) == scan(str(tmp_path / "copy"))
    assert os.lstat(tmp_path / "copy" / "hostname").st_mtime_ns == 123456789
    assert stat.S_ISFIFO(os.lstat(tmp_path / "copy" / "fifo").st_mode)


# -- the line merge ------------------------------------------------------------

LINES = b"".join(b"line %d\n" % i for i in range(1, 21))


def _edit(text, number, replacement):
    return text.replace(b"line %d\n" % number, replacement)


MERGE_TABLE = [
    # (local, new, clean?)
    (_edit(LINES, 2, b"two\n"), _edit(LINES, 18, b"eighteen\n"), True),
    (_edit(LINES, 2, b"two\n"), _edit(LINES, 2, b"TWO\n"), False),
    (_edit(LINES, 2, b"two\n"), _edit(LINES, 3, b"three\n"), False),     # adjacent lines
    (_edit(LINES, 5, b""), _edit(LINES, 15, b"fifteen\nand more\n"), True),
    (LINES + b"tail\n", b"head\n" + LINES, True),
    (LINES + b"local tail\n", LINES + b"new tail\n", False),
    (_edit(LINES, 10, b"same\n"), _edit(LINES, 10, b"same\n"), True),
]


@pytest.mark.parametrize("local,new,clean", MERGE_TABLE)
def test_line_merge_table(local, new, clean):
    out = merge_lines(LINES, local, new)
    assert (out is not None) == clean
    if clean:
        # both sides' changes are in the result
        for side in (local, new):
            for line in set(side.splitlines()) - set(LINES.splitlines()):
                assert line in out.splitlines()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("local,new,clean", [row for row in MERGE_TABLE if row[2]])
def test_clean_line_merges_agree_with_git_merge_file(tmp_path, local, new, clean):
    paths = []
    for name, data in (("local", local), ("base", LINES), ("new", new)):
        write(tmp_path / name, data)
        paths.append(str(tmp_path / name))
    git = subprocess.run(["git", "merge-file", "-p", *paths], capture_output=True)
    assert git.returncode == 0
    assert merge_lines(LINES, local, new) == git.stdout


def test_line_merge_without_final_newline():
    assert merge_lines(b"a\nb\nc", b"A\nb\nc", b"a\nb\nC") == b"A\nb\nC"


# -- hostile trees -------------------------------------------------------------------

def test_a_local_symlink_never_leads_a_write_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "victim", b"untouched\n")

    def local(d):
        shutil.rmtree(f"{d}/default")
        os.symlink(str(outside), f"{d}/default")          # the release's dir -> a symlink out
        os.symlink(str(outside / "victim"), f"{d}/hostname.rej")   # a trap for the .rej
        write(f"{d}/hostname", b"device\n")

    def new(d):
        write(f"{d}/default/grub", b"GRUB_TIMEOUT=7\n")
        make(d, {"default/added": b"x\n"})
        write(f"{d}/hostname", b"release\n")

    out, result = merged(tmp_path, BASE, local=local, new=new)
    assert os.listdir(outside) == ["victim"]
    assert read(outside / "victim") == b"untouched\n"
    assert os.path.islink(f"{out}/default")
    assert read(f"{out}/hostname.rej") == b"release\n"      # the trap was replaced, not followed
    assert not os.path.islink(f"{out}/hostname.rej")
    assert {c.path for c in result.conflicts} == {"hostname", "default/grub", "default/added"}


def test_a_release_name_is_never_overwritten_by_a_rej(tmp_path):
    out, result = merged(tmp_path, {**BASE, "motd.rej": b"shipped\n"},
                         local=lambda d: write(f"{d}/motd", b"a\n"),
                         new=lambda d: write(f"{d}/motd", b"b\n"))
    assert read(f"{out}/motd.rej") == b"shipped\n"
    (conflict,) = result.conflicts
    assert conflict.reject is None and conflict.original == "motd.orig"


def test_the_output_must_not_exist(tmp_path):
    b, l_, n = three(tmp_path, BASE)
    os.mkdir(tmp_path / "out")
    with pytest.raises(MergeError, match="exists"):
        merge_trees(b, l_, n, str(tmp_path / "out"))


def test_a_tree_that_is_not_a_directory(tmp_path):
    b, l_, n = three(tmp_path, BASE)
    with pytest.raises(MergeError, match="not a directory"):
        merge_trees(b, l_, f"{n}/motd", str(tmp_path / "out"))


def test_a_tree_too_deep_is_refused(tmp_path):
    deep = "/".join(["d"] * 70)
    b, l_, n = three(tmp_path, BASE, new=lambda d: os.makedirs(f"{d}/{deep}"))
    with pytest.raises(MergeError, match="deeper than"):
        merge_trees(b, l_, n, str(tmp_path / "out"))


def test_odd_names_merge_like_any_other(tmp_path):
    odd = os.fsdecode(b"new\nline\xff-latin1 \xe9")
    out, result = merged(tmp_path, {**BASE, odd: b"base\n"},
                         local=lambda d: write(os.path.join(d, odd), b"device\n"),
                         new=lambda d: write(os.path.join(d, odd), b"release\n"))
    assert read(os.path.join(out, odd)) == b"device\n"
    assert read(os.path.join(out, odd + ".rej")) == b"release\n"
    assert [c.path for c in result.conflicts] == [odd]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(tmp_path / "local")
                                                         + [odd + ".rej", odd + ".orig"])
