"""The persistence directory: the release's declaration, /etc per release
(merge on first boot, reuse on rollback, crash safety), machine-id, the
mount plan, factory reset.  Directories only; the mounts themselves are
made by the boot script and checked in QEMU (tests/system/test_persist_qemu.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gitroot.boot import persist
from gitroot.boot.persist import (DEFAULT_PATHS, DeclarationError, Layout, parse_declaration,
                                  prepare_boot, prepare_etc, read_declaration)
from tests.conftest import REPO_ROOT

A = "a" * 40
B = "b" * 40
C = "c" * 40


def write(path, data, mode=None):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def release(tmp_path, name, etc, extra=None):
    """A release tree as the boot sees it at /run/gitroot/lower."""
    root = tmp_path / name
    for path, data in {**etc}.items():
        write(root / "etc" / path, data)
    for path, data in (extra or {}).items():
        if data is None:
            os.makedirs(root / path, exist_ok=True)
        else:
            write(root / path, data)
    os.makedirs(root / "var" / "lib", exist_ok=True)
    return str(root)


# -- the declaration ----------------------------------------------------------------

@pytest.mark.parametrize("text,paths,ephemeral", [
    ("", (), False),
    ("/var\n/home\n", ("/var", "/home"), False),
    ("# comment\n  /srv   # trailing\n\n/var/lib/app\n", ("/srv", "/var/lib/app"), False),
    ("ephemeral\n", (), True),
    ("/var\nephemeral\n", (), True),
    ("/opt/data-1.2@x+y\n", ("/opt/data-1.2@x+y",), False),
])
def test_declaration_table(text, paths, ephemeral):
    d = parse_declaration(text)
    assert (d.paths, d.ephemeral) == (paths, ephemeral)


@pytest.mark.parametrize("text,message", [
    ("var\n", "not an absolute path"),
    ("/var/../etc\n", "not a plain path"),
    ("/var//log\n", "not a plain path"),
    ("/var/\n", "not a plain path"),
    ("/srv/a b\n", "not a plain path"),
    ("/srv/a,upperdir=/x\n", "not a plain path"),
    ("/etc\n", "/etc cannot be persistent"),
    ("/usr/local\n", "/usr cannot be persistent"),
    ("/\n", "not a plain path"),
    ("/run/x\n", "/run cannot be persistent"),
    ("/var\n/var/log\n", "overlaps /var"),
    ("/var\n/var\n", "overlaps /var"),
    ("/a/b/c/d/e/f/g/h/i\n", "more than 8 levels"),
    ("".join(f"/p{i}\n" for i in range(40)), "more than 32 paths"),
])
def test_malformed_declarations(text, message):
    with pytest.raises(DeclarationError, match=message):
        parse_declaration(text)


def test_read_declaration(tmp_path):
    root = tmp_path / "r"
    assert read_declaration(str(root)) == (persist.Declaration(), [])
    write(root / persist.DECLARATION, b"/var\n/opt/app\n")
    d, messages = read_declaration(str(root))
    assert d.paths == ("/var", "/opt/app") and d.source == "release" and messages == []
    write(root / persist.DECLARATION, b"/var\n/etc\n")
    d, messages = read_declaration(str(root))
    assert d.paths == DEFAULT_PATHS
    assert messages == ["/usr/lib/gitroot/persistence: line 2: '/etc': /etc cannot be "
                        "persistent; using the default (/var /home /root /srv)"]
    write(root / persist.DECLARATION, b"\xff\xfe")
    assert "not UTF-8" in read_declaration(str(root))[1][0]
    write(root / persist.DECLARATION, b"/var\n" * 5000)
    assert "larger than" in read_declaration(str(root))[1][0]
    os.unlink(root / persist.DECLARATION)
    os.symlink("/etc/passwd", root / persist.DECLARATION)
    d, messages = read_declaration(str(root))
    assert d.paths == DEFAULT_PATHS and messages
    d, _ = read_declaration(str(root), {"persist": "off"})
    assert d.ephemeral and d.paths == ()


# -- /etc per release ------------------------------------------------------------------

ETC1 = {"hostname": b"debian\n", "motd": b"release 1\n", "app.conf": b"a=1\nb=2\nc=3\n"}


def test_first_boot_copies_the_release(tmp_path):
    layout = Layout(str(tmp_path / "persist"))
    r1 = release(tmp_path, "r1", ETC1)
    record = prepare_etc(layout, A, f"{r1}/etc")
    assert record["from"] is None and record["conflicts"] == []
    assert read(f"{layout.etc_of(A)}/device/motd") == b"release 1\n"
    assert read(f"{layout.etc_of(A)}/release/motd") == b"release 1\n"
    assert layout.current_etc() == A


def test_upgrade_merges_and_rollback_gets_its_own_etc_back(tmp_path):
    layout = Layout(str(tmp_path / "persist"))
    r1 = release(tmp_path, "r1", ETC1)
    r2 = release(tmp_path, "r2", {**ETC1, "motd": b"release 2\n", "app.conf": b"a=1\nb=2\nc=30\n"})
    prepare_etc(layout, A, f"{r1}/etc")
    device = f"{layout.etc_of(A)}/device"
    write(f"{device}/hostname", b"kitchen\n")             # the device's own change
    write(f"{device}/app.conf", b"a=10\nb=2\nc=3\n")      # merges with the release's
    record = prepare_etc(layout, B, f"{r2}/etc")
    new = f"{layout.etc_of(B)}/device"
    assert read(f"{new}/hostname") == b"kitchen\n"
    assert read(f"{new}/motd") == b"release 2\n"
    assert read(f"{new}/app.conf") == b"a=10\nb=2\nc=30\n"
    assert record["from"] == A and record["merged_text"] == ["app.conf"]
    # a later change under release 2 stays with release 2
    write(f"{new}/hostname", b"living-room\n")
    record = prepare_etc(layout, A, f"{r1}/etc")           # rollback
    assert record["from"] is None
    assert read(f"{layout.etc_of(A)}/device/hostname") == b"kitchen\n"
    assert layout.current_etc() == A
    # and forward again: release 2 has its own /etc already
    prepare_etc(layout, B, f"{r2}/etc")
    assert read(f"{new}/hostname") == b"living-room\n"


def test_conflicts_are_recorded(tmp_path):
    layout = Layout(str(tmp_path / "persist"))
    r1 = release(tmp_path, "r1", ETC1)
    r2 = release(tmp_path, "r2", {**ETC1, "hostname": b"release-2\n"})
    prepare_etc(layout, A, f"{r1}/etc")
    write(f"{layout.etc_of(A)}/device/hostname", b"kitchen\n")
    record = prepare_etc(layout, B, f"{r2}/etc")
    assert record["conflicts"] == [{"path": "hostname", "reason": "text changed on both sides, "
                                    "overlapping", "reject": "hostname.rej",
                                    "original": "hostname.orig"}]
    assert layout.merge_record(B) == record


def test_an_interrupted_merge_is_redone(tmp_path):
    """A power cut leaves .building-COMMIT behind and no etc/COMMIT: the next
    boot removes it and merges again, from the same inputs."""
    layout = Layout(str(tmp_path / "persist"))
    r1 = release(tmp_path, "r1", ETC1)
    r2 = release(tmp_path, "r2", {**ETC1, "motd": b"release 2\n"})
    prepare_etc(layout, A, f"{r1}/etc")
    write(f"{layout.etc_of(A)}/device/hostname", b"kitchen\n")
    half = f"{layout.etc}/.building-{B}/device"
    write(f"{half}/hostname", b"half-written")
    record = prepare_etc(layout, B, f"{r2}/etc")
    assert not os.path.exists(f"{layout.etc}/.building-{B}")
    assert read(f"{layout.etc_of(B)}/device/hostname") == b"kitchen\n"
    assert record["from"] == A


KILLER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from gitroot.boot.persist import Layout, prepare_etc
prepare_etc(Layout(sys.argv[2]), sys.argv[3], sys.argv[4])
"""


def test_killed_mid_merge_leaves_old_or_new(tmp_path):
    """SIGKILL at several moments of a real merge: each time the persistence
    directory holds either no /etc for the new release (and the next run
    completes it) or a complete one, never a half one."""
    big = {f"d{i}/f{j}": b"line\n" * 50 for i in range(40) for j in range(25)}
    r1 = release(tmp_path, "r1", {**ETC1, **big})
    r2 = release(tmp_path, "r2", {**ETC1, **big, "motd": b"release 2\n"})
    reference = Layout(str(tmp_path / "reference"))
    prepare_etc(reference, A, f"{r1}/etc")
    prepare_etc(reference, B, f"{r2}/etc")
    expected = _listing(f"{reference.etc_of(B)}/device")
    outcomes = set()
    for delay in (0.05, 0.15, 0.3, 0.6, 1.2):
        layout = Layout(str(tmp_path / f"p{delay}"))
        prepare_etc(layout, A, f"{r1}/etc")
        proc = subprocess.Popen([sys.executable, "-c", KILLER, REPO_ROOT, layout.root, B,
                                 f"{r2}/etc"])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = os.path.isdir(layout.etc_of(B))
        outcomes.add(done)
        if done:
            assert _listing(f"{layout.etc_of(B)}/device") == expected
        prepare_etc(layout, B, f"{r2}/etc")
        assert _listing(f"{layout.etc_of(B)}/device") == expected
        assert not [n for n in os.listdir(layout.etc) if n.startswith(".building")]
    assert False in outcomes        # at least one kill landed mid-merge


def _listing(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = read(path)
    return out


# -- machine-id -----------------------------------------------------------------------

def test_machine_id_is_made_once_and_kept(tmp_path):
    layout = Layout(str(tmp_path / "persist"))
    first = persist.device_machine_id(layout)
    assert len(first) == 32 and int(first, 16) >= 0
    assert persist.device_machine_id(layout) == first
    assert os.stat(layout.machine_id).st_mode & 0o777 == 0o444


def test_machine_id_of_a_device_that_had_one(tmp_path):
    layout = Layout(str(tmp_path / "persist"))
    write(tmp_path / "etc" / "machine-id", b"0123456789abcdef0123456789abcdef\n")
    assert persist.device_machine_id(layout, str(tmp_path / "etc")) == \
        "0123456789abcdef0123456789abcdef"


def test_a_garbled_stored_machine_id_is_replaced(tmp_path):
    layout = Layout(str(tmp_path / "persist"))
    write(layout.machine_id, b"not an id\n")
    assert len(persist.device_machine_id(layout)) == 32


def test_write_machine_id_replaces_a_symlink_without_following_it(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    write(tmp_path / "victim", b"keep\n")
    os.symlink(str(tmp_path / "victim"), etc / "machine-id")
    persist.write_machine_id(str(etc), "f" * 32)
    assert read(etc / "machine-id") == b"f" * 32 + b"\n"
    assert read(tmp_path / "victim") == b"keep\n"
    assert not os.path.islink(etc / "machine-id")


# -- the boot plan --------------------------------------------------------------------

def boot(tmp_path, commit, lower, options=None):
    """prepare_boot with a fresh 'root overlay' (a copy of the release's top)."""
    root = tmp_path / f"root-{commit[:4]}-{time.monotonic_ns()}"
    subprocess.run(["cp", "-a", lower, str(root)], check=True)
    return prepare_boot(Layout(str(tmp_path / "persist")), commit, lower, str(root),
                        options), str(root)


def test_plan_for_the_default_declaration(tmp_path):
    lower = release(tmp_path, "r1", ETC1, {"home": None, "root": None})
    os.symlink("home", f"{lower}/srv")                 # a release's symlink: refused
    plan, root = boot(tmp_path, A, lower)
    layout = Layout(str(tmp_path / "persist"))
    assert [m.line() for m in plan.mounts] == [
        f"bind - {layout.etc_of(A)}/device {root}/etc",
        f"overlay var.mount {lower}/var {root}/var {layout.root}/data/var/upper "
        f"{layout.root}/data/var/work",
        f"overlay home.mount {lower}/home {root}/home {layout.root}/data/home/upper "
        f"{layout.root}/data/home/work",
        f"overlay root.mount {lower}/root {root}/root {layout.root}/data/root/upper "
        f"{layout.root}/data/root/work",
    ]
    assert plan.messages == ["/srv: a symlink or a file in the release, not a directory; "
                             "it stays ephemeral"]
    machine_id = read(layout.machine_id)
    assert read(f"{layout.etc_of(A)}/device/machine-id") == machine_id


def test_a_path_missing_from_the_release_is_a_bind_mount(tmp_path):
    lower = release(tmp_path, "r1", ETC1, {persist.DECLARATION: b"/opt/data\n"})
    plan, root = boot(tmp_path, A, lower)
    layout = Layout(str(tmp_path / "persist"))
    assert plan.mounts[1].line() == \
        f"bind opt-data.mount {layout.root}/data/opt%data/upper {root}/opt/data"
    assert os.path.isdir(f"{root}/opt/data")


def test_kiosk_keeps_nothing_but_the_machine_id(tmp_path):
    lower = release(tmp_path, "r1", ETC1, {persist.DECLARATION: b"ephemeral\n"})
    plan, root = boot(tmp_path, A, lower)
    assert plan.mounts == [] and plan.messages == []
    layout = Layout(str(tmp_path / "persist"))
    assert not os.path.exists(layout.etc)
    assert read(f"{root}/etc/machine-id") == read(layout.machine_id)
    lower2 = release(tmp_path, "r2", ETC1)
    plan, _ = boot(tmp_path, B, lower2, {"persist": "off"})
    assert plan.mounts == []


def test_conflicts_are_announced_at_boot(tmp_path):
    r1 = release(tmp_path, "r1", ETC1)
    r2 = release(tmp_path, "r2", {**ETC1, "motd": b"two\n"})
    boot(tmp_path, A, r1)
    layout = Layout(str(tmp_path / "persist"))
    write(f"{layout.etc_of(A)}/device/motd", b"mine\n")
    plan, _ = boot(tmp_path, B, r2)
    assert plan.messages == [f"/etc: 1 conflict(s) merging the device's changes into release "
                             f"{B[:12]}: motd; see gitroot status"]
    assert plan.etc["conflicts"][0]["reject"] == "motd.rej"


def test_factory_reset(tmp_path):
    r1 = release(tmp_path, "r1", ETC1)
    boot(tmp_path, A, r1)
    layout = Layout(str(tmp_path / "persist"))
    write(f"{layout.etc_of(A)}/device/motd", b"mine\n")
    write(f"{layout.data}/var/upper/lib/app.db", b"data")
    machine_id = read(layout.machine_id)
    persist.request_factory_reset(layout)
    plan, _ = boot(tmp_path, A, r1)
    assert plan.messages == ["factory reset: the device's /etc and persistent data were dropped"]
    assert read(f"{layout.etc_of(A)}/device/motd") == b"release 1\n"
    assert not os.path.exists(f"{layout.data}/var/upper/lib")
    assert read(layout.machine_id) == machine_id
    assert not os.path.exists(layout.factory_reset)
    assert sorted(os.listdir(layout.root)) == ["data", "etc", "machine-id"]


def test_unsafe_persistence_directory_name(tmp_path):
    lower = release(tmp_path, "r1", ETC1)
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", lower, str(root)], check=True)
    plan = prepare_boot(Layout(str(tmp_path / "a,b")), A, lower, str(root))
    assert plan.mounts == [] and "cannot be used in a mount option" in plan.messages[0]


def test_merge_record_of_garbage(tmp_path):
    layout = Layout(str(tmp_path / "persist"))
    write(f"{layout.current}", b"../../etc\n")
    assert layout.current_etc() is None
    write(f"{layout.etc}/{A}/merge.json", b"[not json")
    assert layout.merge_record(A) is None
    with pytest.raises(persist.PersistError):
        layout.etc_of("../x")
    assert json.loads(json.dumps(persist.Declaration().__dict__))


def test_prune_etc_keeps_what_gc_keeps_and_the_current_one(tmp_path):
    layout = Layout(str(tmp_path / "persist"))
    r1 = release(tmp_path, "r1", ETC1)
    for commit in (A, B, C):
        prepare_etc(layout, commit, f"{r1}/etc")
    assert persist.prune_etc(layout, {A}) == [B]           # C is mounted last: kept
    assert sorted(n for n in os.listdir(layout.etc) if n != "current") == [A, C]
    assert persist.prune_etc(Layout(str(tmp_path / "none")), set()) == []


@pytest.mark.parametrize("line,persist", [("gitroot.persist=off", "off"),
                                           ("gitroot.persist=on", "on"), ("", None)])
def test_the_kiosk_option_on_the_command_line(line, persist):
    from gitroot.boot.cmdline import parse_cmdline
    params = parse_cmdline(f"boot=gitroot {line}")
    assert params.options.get("persist") == persist
    assert "persist" not in params.unknown_options


@pytest.mark.parametrize("line", ["gitroot.persist=of", "gitroot.persist=", "gitroot.persist"])
def test_a_malformed_kiosk_option_is_an_error(line):
    from gitroot.boot.cmdline import parse_cmdline
    from gitroot.errors import CmdlineError
    with pytest.raises(CmdlineError, match="gitroot.persist"):
        parse_cmdline(line)


@pytest.mark.parametrize("path", ["/var", "/var/lib/app-data", "/srv/.hidden", "/home/a@b+c",
                                  "/opt/x_y.z/-lead", "/"])
def test_mount_unit_names_are_systemds(path):
    """The unit name the boot script writes is the one systemd gives the
    mount point (systemd-escape, where the host has it)."""
    import shutil
    expected = {"/var": "var.mount", "/var/lib/app-data": "var-lib-app\\x2ddata.mount",
                "/": "-.mount"}
    if shutil.which("systemd-escape"):
        expected[path] = subprocess.run(["systemd-escape", "--path", "--suffix=mount", path],
                                        capture_output=True, text=True,
                                        check=True).stdout.strip()
    if path not in expected:
        pytest.skip("systemd-escape is not installed")
    assert persist.mount_unit(path) == expected[path]


# -- is there any data migration to run? ---------------------------------------------

M1, M2 = "20250101000000-one", "20250202000000-two"


def _migrations_world(tmp_path, carried=(), applied=(), markers=(), odd=None):
    lower, layout = tmp_path / "lower", Layout(str(tmp_path / "persist"))
    release_dir = lower / persist.MIGRATIONS_IN_RELEASE
    for name in carried:
        (release_dir / name).mkdir(parents=True)
    for name in applied:
        os.makedirs(os.path.join(layout.migrations, "applied", name))
    for name in markers:
        os.makedirs(os.path.join(layout.migrations, name))
    if odd == "bad-name":
        (release_dir / "not-a-migration").mkdir(parents=True)
    elif odd == "symlink":
        release_dir.mkdir(parents=True, exist_ok=True)
        os.symlink("/tmp", release_dir / M2)
    return layout, str(lower)


@pytest.mark.parametrize("carried, applied, markers, odd, none_due", [
    ((), (), (), None, True),                       # no migrations anywhere
    ((M1,), (M1,), (), None, True),                 # all applied already
    ((M1, M2), (M1, M2), (), None, True),
    ((M1, M2), (M1,), (), None, False),             # one to run up
    ((M1,), (M1, M2), (), None, False),             # one to revert (a rollback)
    ((M1,), (M1,), (".applying-" + M2,), None, False),   # a run cut short
    ((M1,), (M1,), (".reverting-" + M1,), None, False),
    ((M1,), (M1,), (), "bad-name", False),          # migrate reports it
    ((M1,), (M1,), (), "symlink", False),
], ids=["nothing", "applied", "applied-two", "up", "down", "applying", "reverting",
        "bad-name", "symlink"])
def test_nothing_to_migrate_only_when_certain(tmp_path, carried, applied, markers, odd,
                                             none_due):
    layout, lower = _migrations_world(tmp_path, carried, applied, markers, odd)
    assert persist.nothing_to_migrate(layout, lower) is none_due


def test_boot_persist_leaves_the_flag_only_when_nothing_is_due(tmp_path, monkeypatch):
    """The flag gitroot-migrate.service's ConditionPathExists=! reads."""
    from gitroot.cli import boot_persist
    run = tmp_path / "run"
    monkeypatch.setenv("GITROOT_RUN_DIR", str(run))
    flag = run / persist.NOTHING_TO_MIGRATE
    boot_persist._tell_migrate_service(True)
    assert flag.exists()
    boot_persist._tell_migrate_service(False)
    assert not flag.exists()
    boot_persist._tell_migrate_service(False)      # no flag to remove: no error
    assert not flag.exists()
