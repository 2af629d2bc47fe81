"""The systemd units parse and reference what they should."""

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT
UNITS = os.path.join(REPO_ROOT, "systemd")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_verify(tmp_path):
    # systemd-analyze checks ExecStart= exists; point it at a real program.
    for name in os.listdir(UNITS):
        with open(os.path.join(UNITS, name)) as f:
            text = f.read().replace("/usr/bin/gitroot", shutil.which("true"))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no"]
                          + sorted(str(p) for p in tmp_path.iterdir()),
                          capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "gitroot" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_units_run_the_right_verbs():
    def exec_start(name):
        with open(os.path.join(UNITS, name)) as f:
            return re.search(r"^ExecStart=(.*)$", f.read(), re.M).group(1)
    assert exec_start("gitroot-fetch.service") == "/usr/bin/gitroot fetch"
    assert exec_start("gitroot-mark-good.service") == "/usr/bin/gitroot mark-good"
    assert exec_start("gitroot-migrate.service") == "/usr/bin/gitroot migrate"
    with open(os.path.join(UNITS, "gitroot-fetch.timer")) as f:
        assert "OnUnitActiveSec=" in f.read()


def test_fetch_service_has_a_deadline_beyond_the_fetchers_own():
    """A stalled fetch is ended by gitroot's fetch_timeout first (and recorded);
    systemd's TimeoutStartSec is the backstop, so it must be longer."""
    from gitroot.device.config import Config, parse_duration
    with open(os.path.join(UNITS, "gitroot-fetch.service")) as f:
        match = re.search(r"^TimeoutStartSec=(\S+)$", f.read(), re.M)
    assert match, "gitroot-fetch.service has no TimeoutStartSec"
    assert parse_duration(match.group(1)) > Config().fetch_timeout
