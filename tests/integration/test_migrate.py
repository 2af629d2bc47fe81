"""Data migrations with real scripts on real directories: up in order, a failing
up restored from its snapshot, down on rollback with the stored scripts, the
signature gate, malformed specs, timeouts, a power cut, the listing."""

import json
import os
import shutil
import textwrap

import pytest

from gitroot.boot.persist import Layout
from gitroot.device import migrate
from gitroot.errors import MigrationError
from tests.conftest import REPO_ROOT, gitroot_cmd

COMMIT = "1" * 40
OLDER = "2" * 40

UP = """#!/bin/sh
set -e
echo "up $GITROOT_MIGRATION_ID" >>"$GITROOT_ROOT/var/lib/app/log"
{body}
"""
DOWN = """#!/bin/sh
set -e
echo "down $GITROOT_MIGRATION_ID" >>"$GITROOT_ROOT/var/lib/app/log"
{body}
"""


def add_migration(root, migration_id, up_body="", down_body="", spec=None):
    d = os.path.join(root, migrate.MIGRATIONS_IN_RELEASE, migration_id)
    os.makedirs(d)
    with open(os.path.join(d, "spec.yml"), "w") as f:
        f.write(spec if spec is not None else textwrap.dedent(f"""\
            name: {migration_id.split('-', 1)[1]}
            description: test migration {migration_id}
            snapshot:
              - /var/lib/app
            """))
    for name, text in (("up", UP.format(body=up_body)), ("down", DOWN.format(body=down_body))):
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    return d


@pytest.fixture
def device(tmp_path):
    root = tmp_path / "root"
    os.makedirs(root / "var/lib/app")
    (root / "var/lib/app/data").write_text("v1\n")
    return str(root), Layout(str(tmp_path / "persist"))


def trusted():
    return None


def untrusted():
    raise MigrationError("no signature")


def log_of(root):
    try:
        with open(os.path.join(root, "var/lib/app/log")) as f:
            return f.read().split("\n")[:-1]
    except FileNotFoundError:
        return []


def test_up_runs_pending_migrations_in_order_once(device):
    root, layout = device
    for mid in ("20250301000000-third", "20250101000000-first", "20250201000000-second"):
        add_migration(root, mid)
    result = migrate.run_migrations(layout, root, COMMIT, trusted)
    assert result.result == "ok"
    assert result.ran == ["up 20250101000000-first", "up 20250201000000-second",
                          "up 20250301000000-third"]
    assert log_of(root) == ["up 20250101000000-first", "up 20250201000000-second",
                            "up 20250301000000-third"]
    again = migrate.run_migrations(layout, root, COMMIT, trusted)
    assert again.result == "nothing" and again.ran == []
    assert len(log_of(root)) == 3
    assert migrate.blocks_mark_good(layout, root, COMMIT) is None
    stored = os.path.join(layout.migrations, "applied", "20250101000000-first")
    assert sorted(os.listdir(stored)) == ["applied.json", "down", "spec.yml", "up"]


def test_the_scripts_environment(device):
    root, layout = device
    add_migration(root, "20250101000000-env", up_body='env | sort >"$GITROOT_ROOT/env"')
    migrate.run_migrations(layout, root, COMMIT, trusted)
    with open(os.path.join(root, "env")) as f:
        env = dict(line.split("=", 1) for line in f.read().splitlines())
    assert env["GITROOT_MIGRATION_ID"] == "20250101000000-env"
    assert env["GITROOT_MIGRATION_NAME"] == "env"
    assert env["GITROOT_MIGRATION_DIRECTION"] == "up"
    assert env["GITROOT_RELEASE"] == COMMIT
    assert env["GITROOT_ROOT"] == root
    assert env["GITROOT_PERSIST_DIR"] == layout.root
    assert env["GITROOT_MIGRATION_DIR"] == os.path.join(layout.migrations,
                                                        ".applying-20250101000000-env")
    assert env["GITROOT_SNAPSHOT_DIR"].startswith(layout.migrations)
    assert env["PATH"] == migrate.SCRIPT_PATH
    assert "PYTHONPATH" not in env


def test_a_failing_up_is_restored_from_its_snapshot_and_blocks_mark_good(device):
    root, layout = device
    add_migration(root, "20250101000000-ok", up_body='echo v2 >"$GITROOT_ROOT/var/lib/app/data"')
    add_migration(root, "20250201000000-broken",
                  up_body='echo half >"$GITROOT_ROOT/var/lib/app/data"\n'
                          'touch "$GITROOT_ROOT/var/lib/app/stray"\necho oops >&2\nexit 3')
    add_migration(root, "20250301000000-never")
    result = migrate.run_migrations(layout, root, COMMIT, trusted)
    assert result.result == "failed" and result.failed == "20250201000000-broken"
    assert result.ran == ["up 20250101000000-ok"]
    assert "oops" in result.output and "up exited 3" in result.output
    # the state after the first migration, exactly: the log line of the broken
    # one is gone with the rest of its changes
    with open(os.path.join(root, "var/lib/app/data")) as f:
        assert f.read() == "v2\n"
    assert not os.path.exists(os.path.join(root, "var/lib/app/stray"))
    assert log_of(root) == ["up 20250101000000-ok"]
    assert [m.id for m in migrate.Store(layout).applied()] == ["20250101000000-ok"]
    reason = migrate.blocks_mark_good(layout, root, COMMIT)
    assert reason.startswith("migrations failed: up 20250201000000-broken (broken) failed")
    assert not [n for n in os.listdir(layout.migrations) if n.startswith(".applying")]
    assert os.listdir(os.path.join(layout.migrations, "snapshots")) == []


def test_rollback_runs_the_stored_down_scripts_newest_first(device, tmp_path):
    root, layout = device
    for mid in ("20250101000000-a", "20250201000000-b", "20250301000000-c"):
        add_migration(root, mid, down_body=f'echo "undo {mid}" >>"$GITROOT_ROOT/undo"')
    migrate.run_migrations(layout, root, COMMIT, trusted)
    # the older release carries only the first migration (and no scripts for b, c)
    shutil.rmtree(os.path.join(root, migrate.MIGRATIONS_IN_RELEASE, "20250201000000-b"))
    shutil.rmtree(os.path.join(root, migrate.MIGRATIONS_IN_RELEASE, "20250301000000-c"))
    assert "down 20250301000000-c" in migrate.blocks_mark_good(layout, root, OLDER)
    result = migrate.run_migrations(layout, root, OLDER, trusted)
    assert result.ran == ["down 20250301000000-c", "down 20250201000000-b"]
    with open(os.path.join(root, "undo")) as f:
        assert f.read() == "undo 20250301000000-c\nundo 20250201000000-b\n"
    assert [m.id for m in migrate.Store(layout).applied()] == ["20250101000000-a"]
    assert migrate.blocks_mark_good(layout, root, OLDER) is None


def test_a_failing_down_is_restored_and_stays_applied(device):
    root, layout = device
    add_migration(root, "20250101000000-a",
                  down_body='echo broken >"$GITROOT_ROOT/var/lib/app/data"; exit 1')
    migrate.run_migrations(layout, root, COMMIT, trusted)
    shutil.rmtree(os.path.join(root, migrate.MIGRATIONS_IN_RELEASE))
    result = migrate.run_migrations(layout, root, OLDER, trusted)
    assert result.result == "failed" and result.failed == "20250101000000-a"
    with open(os.path.join(root, "var/lib/app/data")) as f:
        assert f.read() == "v1\n"
    assert [m.id for m in migrate.Store(layout).applied()] == ["20250101000000-a"]


def test_nothing_runs_from_an_untrusted_release(device):
    root, layout = device
    add_migration(root, "20250101000000-a")
    result = migrate.run_migrations(layout, root, COMMIT, untrusted)
    assert result.result == "refused" and "no signature" in result.message
    assert log_of(root) == []
    assert migrate.blocks_mark_good(layout, root, COMMIT).startswith("migrations refused")


def test_the_signature_is_not_asked_for_when_nothing_is_due(device):
    root, layout = device
    assert migrate.run_migrations(layout, root, COMMIT, untrusted).result == "nothing"


@pytest.mark.parametrize("spec,message", [
    ("name: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping"),
    ("description: no name\n", "name must be"),
    ("name: x\nsnapshot: /var\n", "snapshot must be a list"),
    ("name: x\nsnapshot: [/etc/passwd]\n", "/etc cannot be persistent"),
    ("name: x\nsnapshot: [../../outside]\n", "not an absolute path"),
    ("name: x\ntimeout: forever\n", "timeout must be"),
    ("name: x\nrun_as: nobody\n", "unknown key"),
    ("name: !!python/object/apply:os.system [touch /tmp/pwned]\n", "not valid YAML"),
])
def test_malformed_specs_fail_the_run_and_run_nothing(device, spec, message):
    root, layout = device
    add_migration(root, "20250101000000-bad", spec=spec)
    result = migrate.run_migrations(layout, root, COMMIT, trusted)
    assert result.result == "failed" and message in result.message
    assert log_of(root) == []
    assert migrate.blocks_mark_good(layout, root, COMMIT)


def test_a_badly_named_directory_is_reported(device):
    root, layout = device
    os.makedirs(os.path.join(root, migrate.MIGRATIONS_IN_RELEASE, "not-a-migration"))
    result = migrate.run_migrations(layout, root, COMMIT, trusted)
    assert result.result == "failed" and "not a migration directory" in result.message


def test_a_missing_down_script_is_a_problem(device):
    root, layout = device
    d = add_migration(root, "20250101000000-a")
    os.unlink(os.path.join(d, "down"))
    result = migrate.run_migrations(layout, root, COMMIT, trusted)
    assert result.result == "failed" and "down: missing" in result.message


def test_a_script_past_its_timeout_is_killed_and_restored(device):
    root, layout = device
    add_migration(root, "20250101000000-slow",
                  up_body='echo changed >"$GITROOT_ROOT/var/lib/app/data"; sleep 30',
                  spec="name: slow\nsnapshot: [/var/lib/app]\ntimeout: 1\n")
    result = migrate.run_migrations(layout, root, COMMIT, trusted)
    assert result.result == "failed" and "killed after 1 s" in result.output
    with open(os.path.join(root, "var/lib/app/data")) as f:
        assert f.read() == "v1\n"


def test_a_power_cut_during_up_is_undone_and_the_migration_runs_again(device):
    root, layout = device
    d = add_migration(root, "20250101000000-a", up_body='echo v2 >"$GITROOT_ROOT/var/lib/app/data"')
    store = migrate.Store(layout)
    # what a power cut in the middle of `up` leaves: the copy being applied,
    # a complete snapshot, and data half changed
    os.makedirs(store.dir)
    shutil.copytree(d, os.path.join(store.dir, ".applying-20250101000000-a"))
    migrate._snapshot(("/var/lib/app",), root, os.path.join(store.snapshots, "20250101000000-a"))
    with open(os.path.join(root, "var/lib/app/data"), "w") as f:
        f.write("half\n")
    with open(os.path.join(root, "var/lib/app/log"), "w") as f:
        f.write("up 20250101000000-a\n")
    result = migrate.run_migrations(layout, root, COMMIT, trusted)
    assert result.ran == ["up 20250101000000-a"]
    assert log_of(root) == ["up 20250101000000-a"]       # once: the first try was undone
    with open(os.path.join(root, "var/lib/app/data")) as f:
        assert f.read() == "v2\n"


def test_describe_and_the_migrations_verb(device, tmp_path):
    root, layout = device
    add_migration(root, "20250101000000-first")
    migrate.run_migrations(layout, root, COMMIT, trusted)
    add_migration(root, "20250201000000-second")
    info = migrate.describe(layout, root)
    assert [m["id"] for m in info["applied"]] == ["20250101000000-first"]
    assert [(m["id"], m["name"]) for m in info["pending_up"]] == [("20250201000000-second",
                                                                   "second")]
    assert info["last_run"]["result"] == "ok"
    state_dir = os.path.join(os.path.dirname(layout.root), "state")
    config = tmp_path / "gitroot.yml"
    config.write_text(f"repository: {tmp_path}/repo.git\nstate_dir: {state_dir}\n"
                      "signature_policy: none\n")
    out = gitroot_cmd("migrations", "--config", config, "--root", root).stdout
    assert "applied       20250101000000-first  first" in out
    assert "pending up    20250201000000-second  second" in out
    data = json.loads(gitroot_cmd("migrations", "--config", config, "--root", root,
                                  "--json").stdout)
    assert data["pending_up"][0]["description"] == "test migration 20250201000000-second"


def test_the_migrate_verb_refuses_without_trusted_keys(device, tmp_path):
    root, layout = device
    add_migration(root, "20250101000000-first")
    state_dir = os.path.join(os.path.dirname(layout.root), "state")
    config = tmp_path / "gitroot.yml"
    config.write_text(f"repository: {tmp_path}/repo.git\nstate_dir: {state_dir}\n"
                      "signature_policy: none\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "booted").write_text(json.dumps({"commit": COMMIT, "reason": "trial"}))
    env = dict(os.environ, GITROOT_RUN_DIR=str(run_dir), GITROOT_CMDLINE="",
               PYTHONPATH=REPO_ROOT)
    proc = gitroot_cmd("migrate", "--config", config, "--root", root, check=False, env=env)
    assert proc.returncode == 15, proc.stderr
    assert proc.stderr.strip().startswith("gitroot: error: migrations refused: no migration "
                                          "runs from a release without a trusted signature")
    assert log_of(root) == []
