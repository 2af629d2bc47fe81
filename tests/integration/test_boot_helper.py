"""The boot script's one Python process, outside QEMU.

initramfs/gitroot is sourced by dash here, as /init sources it, and its own
functions start ``gitroot boot-helper`` on two FIFOs and send it the boot's
requests (``gitroot_helper_start``, ``gitroot_ask``, ``gitroot_helper_stop``):
the command line, a boot-select that records the boot, a real FUSE mount
whose daemon the helper forks, refused requests, a helper that died.  The
QEMU boots (tests/system) run the same code as PID 1's script.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, fuse_available, gitroot_cmd
from tests.mounts import is_mounted, wait_gone
from tests.sample_tree import make_sample_tree

SCRIPT = os.path.join(REPO_ROOT, "initramfs", "gitroot")


def _dash(tmp_path, body: str, cmdline: str, timeout: float = 120):
    """Run *body* after sourcing the boot script, with this interpreter as python3."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "python3").exists():
        os.symlink(sys.executable, bindir / "python3")
    prologue = f"""
. {SCRIPT}
GITROOT_RUN={tmp_path / "run"}
GITROOT_PYTHONPATH={REPO_ROOT}
panic() {{ echo "PANIC $*"; exit 99; }}
"""
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", GITROOT_CMDLINE=cmdline,
               GITROOT_RUN_DIR=str(tmp_path / "run"))
    return subprocess.run(["dash", "-c", prologue + body], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture()
def repo(tmp_path):
    src = make_sample_tree(str(tmp_path / "src"), big_file=False)
    repo = tmp_path / "medium" / "gitroot" / "repo.git"
    commit = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main",
                         "-m", "s").stdout.strip()
    return repo, commit


def test_params_setenv_and_refusals_in_one_process(tmp_path):
    proc = _dash(tmp_path, """
gitroot_helper_start
echo "pid ${GITROOT_HELPER_PID}"
gitroot_ask params; echo "status $?"
gitroot_ask setenv GITROOT_CMDLINE 'gitroot.root=/dev/vdb gitroot.commit=nothex'
gitroot_ask params; echo "status $?"
gitroot_ask setenv PATH /nowhere; echo "status $?"
gitroot_ask fetch --now; echo "status $?"
gitroot_ask boot-select --no-such-option; echo "status $?"
echo "pid again $(cat /proc/${GITROOT_HELPER_PID}/stat | cut -d' ' -f1)"
gitroot_helper_stop
echo "stopped $?"
[ -e /proc/${GITROOT_HELPER_PID} ] || echo "helper gone"
ls "${GITROOT_RUN}"
""", 'quiet gitroot.root=LABEL=gitroot gitroot.rootfstype=ext4 gitroot.repo="/r.git"')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    pid = lines[0].split()[1]
    # one helper answered everything: its pid is the same at the end
    assert lines[1:7] == ["LABEL=gitroot", "ext4", "", "/r.git", "", "status 0"]
    # the malformed gitroot.commit= set through setenv: one line, status 1
    assert lines[7] == "status 1"
    assert "gitroot.commit" in proc.stderr and "Traceback" not in proc.stderr
    assert lines[8:11] == ["status 2", "status 2", "status 2"]
    assert "not a boot request: 'fetch'" in proc.stderr
    assert "setenv takes GITROOT_NAME VALUE" in proc.stderr
    assert lines[11] == f"pid again {pid}"
    assert lines[12:14] == ["stopped 0", "helper gone"]
    # the FIFOs were unlinked once open
    assert lines[14:] == []


def test_boot_select_and_mount_through_the_helper(tmp_path, repo):
    if not fuse_available():
        pytest.skip("needs root, /dev/fuse and fusermount")
    repo_path, commit = repo
    mnt = tmp_path / "lower"
    mnt.mkdir()
    proc = _dash(tmp_path, f"""
gitroot_helper_start
gitroot_ask params >/dev/null
state={tmp_path / "medium" / "gitroot" / "state"}
pinned=$(gitroot_ask boot-select --dry-run --with-reason --config /dev/null \\
    --repo {repo_path} --state-dir "$state"); echo "pinned $? $pinned"
# what the script does when a debug pin cannot be mounted
gitroot_ask setenv GITROOT_CMDLINE "boot=gitroot gitroot.commit={commit}"
choice=$(gitroot_ask boot-select --with-reason --config /dev/null --repo {repo_path} \\
    --state-dir "$state"); echo "select $? $choice"
gitroot_ask mount --repo {repo_path} --suid --pid-file {tmp_path / "daemon.pid"} \\
    {commit} {mnt}; echo "mount $?"
gitroot_ask mount --repo {repo_path} 0000000000000000000000000000000000000000 {mnt}
echo "bad mount $?"
gitroot_helper_stop
echo "stopped $?"
""", f"boot=gitroot update-revision={commit}")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == f"pinned 0 {commit} debug-pin"
        assert lines[1] == f"select 0 {commit} loader"
        assert lines[2] == "mount 0"
        assert lines[3] != "bad mount 0" and lines[3].startswith("bad mount ")
        assert "Traceback" not in proc.stderr
        assert lines[4] == "stopped 0"
        with open(tmp_path / "run" / "booted") as f:
            assert json.load(f)["commit"] == commit
        # the daemon the helper forked outlives it and holds neither FIFO
        with open(tmp_path / "daemon.pid") as f:
            pid = int(f.read())
        assert is_mounted(mnt)
        for fd in ("0", "1"):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert sorted(os.listdir(mnt)) == sorted(os.listdir(tmp_path / "src"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        if os.path.exists(tmp_path / "daemon.pid"):
            with open(tmp_path / "daemon.pid") as f:
                wait_gone(int(f.read()))


def test_a_helper_that_died_fails_its_requests_not_the_script(tmp_path):
    proc = _dash(tmp_path, f"""
gitroot_helper_start
gitroot_ask params >/dev/null
kill -{signal.SIGKILL.value} "${{GITROOT_HELPER_PID}}"
wait "${{GITROOT_HELPER_PID}}"
out=$(gitroot_ask boot-select --dry-run); echo "select $? [$out]"
gitroot_ask params; echo "params $?"
echo "still here"
""", "boot=gitroot")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["select 70 []", "params 70", "still here"]
    assert "boot helper" in proc.stderr
