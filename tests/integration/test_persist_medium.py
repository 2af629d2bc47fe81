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
