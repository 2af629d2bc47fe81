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
    systemd's RuntimeMaxSec is the backstop, so it must be longer (the unit
    is Type=exec: TimeoutStartSec would end only its start)."""
    from gitroot.device.config import Config, parse_duration
    with open(os.path.join(UNITS, "gitroot-fetch.service")) as f:
        match = re.search(r"^RuntimeMaxSec=(\S+)$", f.read(), re.M)
    assert match, "gitroot-fetch.service has no RuntimeMaxSec"
    assert parse_duration(match.group(1)) > Config().fetch_timeout


def _settings(name):
    settings = {}
    with open(os.path.join(UNITS, name)) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                settings.setdefault(key, []).extend(value.split())
    return settings


@pytest.mark.parametrize("name", ["gitroot-fetch.service", "gitroot-mark-good.service"])
def test_the_boot_waits_for_neither_fetch_nor_mark_good(name):
    """multi-user.target is ordered after what it wants unless the unit is
    ordered after it; a oneshot's start job lasts until it exits, and the
    Type=idle getty waits for every start job: the boot would wait for a
    Python start (docs/performance.md, "Boot time")."""
    settings = _settings(name)
    assert "multi-user.target" in settings["WantedBy"]
    assert "multi-user.target" in settings["After"]
    assert settings["Type"] == ["exec"]


def test_migrate_service_is_skipped_when_the_boot_path_says_nothing_is_due():
    from gitroot.boot.persist import NOTHING_TO_MIGRATE
    with open(os.path.join(REPO_ROOT, "systemd", "gitroot-migrate.service")) as f:
        lines = [line.strip() for line in f]
    assert f"ConditionPathExists=!/run/gitroot/{NOTHING_TO_MIGRATE}" in lines
