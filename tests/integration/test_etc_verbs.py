"""gitroot etc diff/conflicts/resolve, gitroot status's persistence lines and
gitroot factory-reset, run as commands on a persistence directory made by
the boot path's own code."""

import json
import os

import pytest

from gitroot.boot.persist import Layout, prepare_etc
from tests.conftest import REPO_ROOT, gitroot_cmd

A = "a" * 40
B = "b" * 40


def write(path, data):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(data)


@pytest.fixture
def device(tmp_path):
    """Release A booted, the device changed its /etc, release B booted (a conflict)."""
    for name, motd in (("r1", "release 1\n"), ("r2", "release 2\n")):
        write(tmp_path / name / "etc" / "motd", motd)
        write(tmp_path / name / "etc" / "hosts", "127.0.0.1 localhost\n")
        write(tmp_path / name / "etc" / "fstab", "# none\n")
    layout = Layout(str(tmp_path / "medium" / "persist"))
    prepare_etc(layout, A, str(tmp_path / "r1" / "etc"))
    device_etc = os.path.join(layout.etc_of(A), "device")
    write(os.path.join(device_etc, "motd"), "the device's own\n")
    write(os.path.join(device_etc, "hosts"), "127.0.0.1 localhost\n10.0.0.2 printer\n")
    os.unlink(os.path.join(device_etc, "fstab"))
    prepare_etc(layout, B, str(tmp_path / "r2" / "etc"))
    config = tmp_path / "gitroot.yml"
    config.write_text(f"repository: {tmp_path}/medium/repo.git\n"
                      f"state_dir: {tmp_path}/medium/state\nsignature_policy: none\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "booted").write_text(json.dumps({"commit": B, "reason": "trial",
                                                "detail": "trial, try 1 of 3"}))
    env = dict(os.environ, GITROOT_RUN_DIR=str(run_dir), GITROOT_CMDLINE="",
               PYTHONPATH=REPO_ROOT)

    def cmd(verb, *args, check=True):
        return gitroot_cmd(verb, "--config", config, *args, check=check, env=env)

    return layout, cmd


def test_diff_against_the_release_default(device):
    layout, cmd = device
    out = cmd("etc", "diff").stdout.splitlines()
    assert "diff --git a/etc/hosts b/etc/hosts" in out
    assert "+10.0.0.2 printer" in out
    assert "deleted file mode 100644" in out
    assert "+the device's own" in out and "-release 2" in out
    only = cmd("etc", "diff", "/etc/hosts").stdout
    assert "motd" not in only and "printer" in only


def test_conflicts_in_status_and_resolve(device):
    layout, cmd = device
    status = cmd("status", "--no-verify").stdout
    assert "/etc:          kept, merged from aaaaaaaaaaaa; 1 conflict(s)" in status
    assert "CONFLICT     /etc/motd: text changed on both sides, overlapping " \
           "(see /etc/motd.rej, /etc/motd.orig)" in status
    info = json.loads(cmd("status", "--no-verify", "--json").stdout)
    assert info["persistence"]["etc"]["conflicts"][0]["path"] == "motd"
    assert cmd("etc", "conflicts").stdout == \
        "/etc/motd: text changed on both sides, overlapping\n"
    device_etc = os.path.join(layout.etc_of(B), "device")
    assert cmd("etc", "resolve", "/etc/motd", "--take-release").stdout == \
        "/etc/motd: resolved, the release's version kept\n"
    with open(os.path.join(device_etc, "motd")) as f:
        assert f.read() == "release 2\n"
    assert not os.path.exists(os.path.join(device_etc, "motd.rej"))
    assert not os.path.exists(os.path.join(device_etc, "motd.orig"))
    assert "0 conflict(s)" in cmd("status", "--no-verify").stdout
    again = cmd("etc", "resolve", "motd", check=False)
    assert again.returncode == 14
    assert again.stderr == f"gitroot: error: no conflict on /etc/motd in release {B[:12]}\n"


def test_factory_reset_needs_its_flag(device):
    layout, cmd = device
    refused = cmd("factory-reset", check=False)
    assert refused.returncode == 2 and "--confirm" in refused.stderr
    assert not os.path.exists(layout.factory_reset)
    assert "reboot to apply it" in cmd("factory-reset", "--confirm").stdout
    assert os.path.exists(layout.factory_reset)


def test_etc_verbs_without_a_kept_etc(device, tmp_path):
    layout, cmd = device
    proc = cmd("etc", "--release", "c" * 40, "diff", check=False)
    assert proc.returncode == 14 and "no /etc kept for release cccccccccccc" in proc.stderr


def test_boot_persist_prints_the_mounts(tmp_path):
    """The boot path's verb, as the boot script runs it (stdout: the plan;
    stderr: what the console shows)."""
    lower = tmp_path / "lower"
    for d in ("etc", "var/lib", "home"):
        os.makedirs(lower / d)
    write(lower / "etc" / "motd", "hello\n")
    write(lower / "usr/lib/gitroot/persistence", "/var\n/home\n/opt/data\n/etc\n")
    root = tmp_path / "root"
    os.makedirs(root / "etc")
    os.makedirs(root / "var")
    os.symlink("var", root / "home")             # the release's symlink: refused
    persist_dir = tmp_path / "medium" / "persist"
    env = dict(os.environ, GITROOT_CMDLINE="", PYTHONPATH=REPO_ROOT)
    proc = gitroot_cmd("boot-persist", "--persist-dir", persist_dir, "--lower", lower,
                       "--root", root, "--commit", A, env=env)
    # the declaration is malformed: the default paths, /home refused, /root
    # and /srv (not in the release) bind-mounted from the medium
    assert proc.stdout.splitlines() == [
        f"bind - {persist_dir}/etc/{A}/device {root}/etc",
        f"overlay var.mount {lower}/var {root}/var {persist_dir}/data/var/upper "
        f"{persist_dir}/data/var/work",
        f"bind root.mount {persist_dir}/data/root/upper {root}/root",
        f"bind srv.mount {persist_dir}/data/srv/upper {root}/srv",
    ]
    with open(persist_dir / "etc" / A / "device" / "machine-id") as f, \
            open(persist_dir / "machine-id") as g:
        assert f.read() == g.read()
    assert proc.stderr.splitlines() == [
        "gitroot: /usr/lib/gitroot/persistence: line 4: '/etc': /etc cannot be persistent; "
        "using the default (/var /home /root /srv)",
        "gitroot: /home: a symlink or a file in the release, not a directory; it stays ephemeral",
    ]
