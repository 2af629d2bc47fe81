"""A full medium during the /etc merge: a clear error, the previous state
intact (a real small tmpfs stands for the medium)."""

import os
import subprocess

import pytest

from gitroot.boot.persist import Layout, prepare_etc
from tests.unit.test_persist import A, B, ETC1, read, release

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


def test_a_full_medium_keeps_the_previous_state(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small)], check=True)
    try:
        layout = Layout(str(small / "persist"))
        r1 = release(tmp_path, "r1", ETC1)
        r2 = release(tmp_path, "r2", {**ETC1, "big": os.urandom(400 * 1024)})
        prepare_etc(layout, A, f"{r1}/etc")
        with pytest.raises(Exception, match="No space left"):
            prepare_etc(layout, B, f"{r2}/etc")
        assert layout.current_etc() == A
        assert not os.path.exists(layout.etc_of(B))
        assert sorted(os.listdir(layout.etc)) == [A, "current"]
        assert read(f"{layout.etc_of(A)}/device/motd") == b"release 1\n"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_full_medium_during_a_snapshot_runs_nothing(tmp_path):
    """The snapshot cannot be taken: a clear error, the data untouched, the
    migration neither run nor recorded as applied."""
    from gitroot.device import migrate
    from tests.integration.test_migrate import add_migration, log_of
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)], check=True)
    try:
        root = tmp_path / "root"
        os.makedirs(root / "var/lib/app")
        (root / "var/lib/app/big").write_bytes(os.urandom(600 * 1024))
        add_migration(str(root), "20250101000000-a", up_body="rm \"$GITROOT_ROOT/var/lib/app/big\"")
        layout = Layout(str(small / "persist"))
        result = migrate.run_migrations(layout, str(root), "1" * 40, lambda: None)
        assert result.result == "failed"
        assert "cannot snapshot /var/lib/app" in result.output
        assert "No space left on device" in result.output
        assert (root / "var/lib/app/big").stat().st_size == 600 * 1024
        assert log_of(str(root)) == []
        assert migrate.Store(layout).applied() == []
        assert os.listdir(os.path.join(layout.migrations, "snapshots")) == []
        assert migrate.blocks_mark_good(layout, str(root), "1" * 40)
    finally:
        subprocess.run(["umount", str(small)], check=True)
