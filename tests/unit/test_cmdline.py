"""The kernel command line parser: tables of command lines and traps.

Pure tests, except the cross-check of the ref-name validator against
``git check-ref-format``, which the parser itself must never call.
"""

import logging
import subprocess

import pytest

from gitroot.boot.cmdline import (BootParams, parse_cmdline, read_cmdline, split_cmdline,
                                  warn_unknown)
from gitroot.git.refs import (branch_name_problem, is_object_id, ref_name_problem,
                              revision_problem)
from gitroot.errors import CmdlineError, GitrootError, UsageError

SHA1 = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "a" * 64

# command line -> the fields that differ from BootParams() (options compared as dict)
GOOD = [
    ("", {}),
    ("   \n", {}),
    ("BOOT_IMAGE=/vmlinuz-6.1 root=/dev/sda1 ro quiet", {}),
    ("fetch-revision=main", {"fetch_revision": "main"}),
    ("fetch-revision=stable/2024 quiet", {"fetch_revision": "stable/2024"}),
    ("quiet\tfetch-revision=main\n", {"fetch_revision": "main"}),
    # quoting, as the kernel does it
    ('fetch-revision="main"', {"fetch_revision": "main"}),
    ('"fetch-revision=main"', {"fetch_revision": "main"}),
    ('gitroot.repo="/media/gitroot store/repo.git" ro',
     {"repo": "/media/gitroot store/repo.git",
      "options": {"repo": "/media/gitroot store/repo.git"}}),
    ('"gitroot.repo=/a b/r.git"', {"repo": "/a b/r.git", "options": {"repo": "/a b/r.git"}}),
    ('gitroot.x="a  b" quiet', {"options": {"x": "a  b"}}),
    ('gitroot.x="a b', {"options": {"x": "a b"}}),  # unterminated: rest of line
    # repeated keys: the last one wins
    ("fetch-revision=main fetch-revision=testing", {"fetch_revision": "testing"}),
    ("gitroot.repo=/a.git gitroot.repo=/b.git", {"repo": "/b.git", "options": {"repo": "/b.git"}}),
    ("noupgrade noupgrade", {"noupgrade": True}),
    # traps that are not gitroot options at all
    ("xfetch-revision=main", {}),
    ("fetch-revisionx=main", {}),
    ("FETCH-REVISION=main", {}),
    ("fetch_revision=main", {}),
    ("rd.fetch-revision=main", {}),
    ("noupgrades noupgrade_ xnoupgrade", {}),
    ("gitroot", {}),
    ("gitrootx.repo=/x", {}),
    ("init=/bin/sh =fetch-revision=x", {}),
    # everything after "--" belongs to init, not to the kernel
    ("quiet -- fetch-revision=main noupgrade", {}),
    ("fetch-revision=main -- noupgrade", {"fetch_revision": "main"}),
    ("fetch-revision=main --x noupgrade", {"fetch_revision": "main", "noupgrade": True}),
    # update-revision: object ids of any length 4..64, or ref names
    (f"update-revision={SHA1}", {"update_revision": SHA1}),
    (f"update-revision={SHA256}", {"update_revision": SHA256}),
    ("update-revision=abcd", {"update_revision": "abcd"}),
    ("update-revision=ABCDEF12", {"update_revision": "ABCDEF12"}),
    ("update-revision=refs/tags/v1.2", {"update_revision": "refs/tags/v1.2"}),
    ("update-revision=v1.2", {"update_revision": "v1.2"}),
    ("noupgrade", {"noupgrade": True}),
    # gitroot.* known options
    ("gitroot.root=/dev/vda2 gitroot.rootfstype=ext4 gitroot.rootflags=noatime,errors=remount-ro",
     {"root": "/dev/vda2", "rootfstype": "ext4", "rootflags": "noatime,errors=remount-ro",
      "options": {"root": "/dev/vda2", "rootfstype": "ext4",
                  "rootflags": "noatime,errors=remount-ro"}}),
    ("gitroot.root=UUID=0a1b-2c3d", {"root": "UUID=0a1b-2c3d", "options": {"root": "UUID=0a1b-2c3d"}}),
    ("gitroot.root=LABEL=gitroot", {"root": "LABEL=gitroot", "options": {"root": "LABEL=gitroot"}}),
    ("gitroot.root=PARTUUID=1234-02", {"root": "PARTUUID=1234-02",
                                       "options": {"root": "PARTUUID=1234-02"}}),
    ("gitroot.config=/etc/gitroot/other.yml", {"config": "/etc/gitroot/other.yml",
                                              "options": {"config": "/etc/gitroot/other.yml"}}),
    # unknown gitroot.* keys are kept, not refused (a rollback must still boot)
    ("gitroot.future=1", {"options": {"future": "1"}}),
    ("gitroot.future=", {"options": {"future": ""}}),
    ("gitroot.a.b=c=d", {"options": {"a.b": "c=d"}}),
    # everything together, with noise around it
    (f'BOOT_IMAGE=/vmlinuz initrd=\\initrd.img fetch-revision=stable update-revision={SHA1} '
     f'noupgrade gitroot.repo=/gitroot/repo.git gitroot.root=LABEL=data console=ttyS0,115200n8',
     {"fetch_revision": "stable", "update_revision": SHA1, "noupgrade": True,
      "repo": "/gitroot/repo.git", "root": "LABEL=data",
      "options": {"repo": "/gitroot/repo.git", "root": "LABEL=data"}}),
    # bytes that are not UTF-8 elsewhere on the line do not matter
    ("quiet x=\udcff fetch-revision=main", {"fetch_revision": "main"}),
    # the boot loader's entry names its commit
    ("gitroot.commit=" + "ab" * 20, {"commit": "ab" * 20, "options": {"commit": "ab" * 20}}),
    ("gitroot.commit=" + "0" * 40 + " gitroot.commit=" + "1" * 64,
     {"commit": "1" * 64, "options": {"commit": "1" * 64}}),
]


@pytest.mark.parametrize("text,fields", GOOD, ids=[repr(t) for t, _ in GOOD])
def test_parse_good(text, fields):
    got = parse_cmdline(text)
    want = dict(vars(BootParams()), **{k: v for k, v in fields.items() if k != "options"})
    want["options"] = fields.get("options", {})
    assert {**vars(got), "options": dict(got.options)} == want


# command line -> words of the message
BAD = [
    ("fetch-revision", ["fetch-revision needs a value"]),
    ("fetch-revision=", ["fetch-revision= is empty"]),
    ('fetch-revision=""', ["fetch-revision= is empty"]),
    ("fetch-revision=main fetch-revision=", ["is empty"]),  # an empty repeat is not "unset"
    ("update-revision", ["update-revision needs a value"]),
    ("update-revision=", ["update-revision= is empty"]),
    ('"fetch-revision"', ["fetch-revision needs a value"]),
    ("noupgrade=1", ["noupgrade takes no value"]),
    ("noupgrade=", ["noupgrade takes no value"]),
    ("gitroot.=x", ["names no option"]),
    ("gitroot.repo", ["gitroot.repo needs a value"]),
    ("gitroot.repo=", ["gitroot.repo= is empty"]),
    ("gitroot.future", ["gitroot.future needs a value"]),
    ("gitroot.repo=relative/repo.git", ["not an absolute path"]),
    ("gitroot.repo=/a/../etc", ["'..'"]),
    ("gitroot.config=etc/gitroot.yml", ["not an absolute path"]),
    ("gitroot.root=sda1", ["neither /dev/NAME"]),
    ("gitroot.root=/dev/", ["neither /dev/NAME"]),
    ("gitroot.root=UUID=", ["UUID is empty"]),
    ("gitroot.rootfstype=Ext4!", ["filesystem type"]),
    ("gitroot.rootflags=\x01", ["control character"]),
    # branch names: git's ref-name rules, plus --branch's
    ("fetch-revision=-main", ["begins with '-'"]),
    ("fetch-revision=HEAD", ["'HEAD'"]),
    ("fetch-revision=refs/heads/main", ["without 'refs/"]),
    ("fetch-revision=a..b", ["'..'"]),
    ("fetch-revision=main~1", ["'~'"]),
    ("fetch-revision=main^", ["'^'"]),
    ("fetch-revision=a:b", ["':'"]),
    ("fetch-revision=a?", ["'?'"]),
    ("fetch-revision=a*", ["'*'"]),
    ("fetch-revision=a[b", ["'['"]),
    ("fetch-revision=a\\b", ["'\\\\'"]),
    ('fetch-revision="a b"', ["' '"]),
    ("fetch-revision=a\x7fb", ["control character"]),
    ("fetch-revision=a\x01b", ["control character"]),
    ("fetch-revision=a\udcffb", ["not UTF-8"]),
    ("fetch-revision=/main", ["begins or ends with '/'"]),
    ("fetch-revision=main/", ["begins or ends with '/'"]),
    ("fetch-revision=a//b", ["'//'"]),
    ("fetch-revision=.hidden", ["begins with '.'"]),
    ("fetch-revision=a/.b", ["begins with '.'"]),
    ("fetch-revision=main.lock", ["'.lock'"]),
    ("fetch-revision=a.lock/b", ["'.lock'"]),
    ("fetch-revision=main.", ["ends with '.'"]),
    ("fetch-revision=a@{1}", ["'@{'"]),
    ("fetch-revision=@", ["'@'"]),
    # revisions
    ("update-revision=main~1", ["not a hex object id", "'~'"]),
    ("update-revision=HEAD^", ["'^'"]),
    ("update-revision=-x", ["begins with '-'"]),
    ("update-revision=a..b", ["'..'"]),
    (f"update-revision={SHA256}0:", ["':'"]),
    ("gitroot.commit=abc123", ["gitroot.commit", "full commit id"]),
    ("gitroot.commit=" + "AB" * 20, ["full commit id"]),
    ("gitroot.commit=main", ["full commit id"]),
    ("gitroot.commit=", ["gitroot.commit= is empty"]),
    ("gitroot.commit", ["gitroot.commit needs a value"]),
]


@pytest.mark.parametrize("text,words", BAD, ids=[repr(t) for t, _ in BAD])
def test_parse_bad(text, words):
    with pytest.raises(CmdlineError) as caught:
        parse_cmdline(text)
    message = str(caught.value)
    for word in words:
        assert word in message
    assert "\n" not in message


def test_error_is_a_usage_error():
    assert issubclass(CmdlineError, UsageError)
    assert issubclass(CmdlineError, GitrootError)
    assert CmdlineError.exit_code == 2


SPLIT = [
    ("a b", [("a", None), ("b", None)]),
    ('a="b c" d', [("a", "b c"), ("d", None)]),
    ('"a=b c"', [("a", "b c")]),
    ('"a b"', [("a b", None)]),
    ('a=b"c d"', [("a", 'b"c d"')]),  # inner quotes stay, as in the kernel
    ('x="', [("x", "")]),
    ('x=""', [("x", "")]),
    ("=a=b", [("=a", "b")]),  # the kernel does not split at a leading "="
    ("a==b", [("a", "=b")]),
    ("k=v=w", [("k", "v=w")]),
    ("a -- b=c", [("a", None)]),
    ('"--" b', []),
    ("a\x0bb\x0cc\rd", [("a", None), ("b", None), ("c", None), ("d", None)]),
]


@pytest.mark.parametrize("text,words", SPLIT, ids=[repr(t) for t, _ in SPLIT])
def test_split_like_the_kernel(text, words):
    assert list(split_cmdline(text)) == words


def test_unknown_options_are_listed():
    params = parse_cmdline("gitroot.repo=/r.git gitroot.zeta=1 gitroot.alpha=2")
    assert params.unknown_options == ("alpha", "zeta")


def test_unknown_options_are_warned_about(caplog):
    params = parse_cmdline("gitroot.repo=/r.git gitroot.brnach=x")
    with caplog.at_level(logging.WARNING, logger="gitroot.test"):
        warn_unknown(params, logging.getLogger("gitroot.test"))
    assert [r.getMessage() for r in caplog.records] == [
        "unknown kernel command line option brnach= ignored (a typo?)"]


def test_params_are_immutable():
    params = parse_cmdline("gitroot.repo=/r.git")
    with pytest.raises(AttributeError):
        params.repo = "/other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        params.options["repo"] = "/other"  # type: ignore[index]


# -- read_cmdline -------------------------------------------------------

def test_read_from_file(tmp_path):
    path = tmp_path / "cmdline"
    path.write_bytes(b"root=/dev/vda1 fetch-revision=stable\n")
    assert read_cmdline(str(path), environ={}).fetch_revision == "stable"


def test_read_non_utf8_file(tmp_path):
    path = tmp_path / "cmdline"
    path.write_bytes(b"x=\xff fetch-revision=stable\n")
    assert read_cmdline(str(path), environ={}).fetch_revision == "stable"
    path.write_bytes(b"fetch-revision=st\xffable\n")
    with pytest.raises(CmdlineError, match="not UTF-8"):
        read_cmdline(str(path), environ={})


def test_env_override_wins_over_file(tmp_path):
    path = tmp_path / "cmdline"
    path.write_bytes(b"fetch-revision=stable\n")
    env = {"GITROOT_CMDLINE": "fetch-revision=testing noupgrade"}
    params = read_cmdline(str(path), environ=env)
    assert (params.fetch_revision, params.noupgrade) == ("testing", True)
    # set but empty means "an empty command line", not "read the file"
    assert read_cmdline(str(path), environ={"GITROOT_CMDLINE": ""}) == BootParams()


def test_env_override_from_os_environ(monkeypatch):
    monkeypatch.setenv("GITROOT_CMDLINE", "update-revision=abcd")
    assert read_cmdline("/nonexistent/cmdline").update_revision == "abcd"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CmdlineError, match="cannot read the kernel command line"):
        read_cmdline(str(tmp_path / "missing"), environ={})


def test_boot_path_imports_only_the_standard_library():
    import sys
    code = ("import sys, gitroot.boot.cmdline; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('yaml', 'requests', 'pygit2', 'fuse', 'cryptography', 'urllib3')); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


# -- validators, cross-checked with git itself ---------------------------

REF_NAMES = [
    "main", "stable/2024", "feature/x-1", "v1.0", "a.b", "ü-ñ", "a@b", "@x", "x@",
    "", "@", "a..b", "a/.b", ".a", "a.lock", "a/b.lock/c", "a.", "a/", "/a", "a//b",
    "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b", "a\\b", "a\x01b", "a\x7fb",
    "a@{b", "a.lock.x", "-a", "refs/heads/main", "HEAD", "a/-b", "lock", ".lock",
]


@pytest.mark.skipif(subprocess.run(["git", "--version"], capture_output=True).returncode,
                    reason="git is not installed")
@pytest.mark.parametrize("name", REF_NAMES, ids=[repr(n) for n in REF_NAMES])
def test_ref_name_rules_agree_with_git(name):
    if not name.startswith("-"):  # git's own command line would take it for an option
        git_ok = subprocess.run(["git", "check-ref-format", "--allow-onelevel", name],
                                capture_output=True).returncode == 0
        assert (ref_name_problem(name) is None) == git_ok
    git_branch_ok = subprocess.run(["git", "check-ref-format", "--branch", name],
                                   capture_output=True).returncode == 0
    ours = branch_name_problem(name) is None
    if name.startswith("refs/") or name == "@":
        # git accepts these (refs/heads/refs/..., "@" as HEAD's branch);
        # we refuse the confusion
        assert git_branch_ok and not ours
    else:
        assert ours == git_branch_ok


@pytest.mark.parametrize("rev,ok", [
    ("abc", True),  # too short for an id, but a fine ref name
    ("abcd", True), (SHA1, True), (SHA256, True), ("a" * 65, True),  # 65: a ref name
    ("main~2", False), ("HEAD@{1}", False), ("", False),
])
def test_revision_rules(rev, ok):
    assert (revision_problem(rev) is None) == ok


@pytest.mark.parametrize("rev,ok", [
    ("abcd", True), (SHA1, True), (SHA256, True), ("abc", False), ("a" * 65, False),
    ("ghij", False), ("main", False),
])
def test_is_object_id(rev, ok):
    assert is_object_id(rev) == ok
