"""Whole boots in QEMU: the boot script, the hook and the jailed daemon.

Every test runs on each guest release in ``GITROOT_BOOT_RELEASES`` (default
``trixie bookworm``): a Debian root of that release (debootstrap, with a
kernel, initramfs-tools and Debian's own python3-pygit2 and python3-fusepy)
gets gitroot, the hook
``hooks/gitroot`` and the boot script ``initramfs/gitroot``; its initramfs is
made with ``update-initramfs`` in a chroot, and the root is committed twice
into a bare repository: a good release whose init reports what it finds and
powers off, and a broken one whose init exits at once (so the kernel
panics).  A disk image holds the repository and a state made with gitroot's
own commands.  QEMU boots the kernel and initrd under TCG and the test reads
the serial console.

Building costs a few minutes, so the kernel, initrd and repository are kept
in the shared cache (see tests/rootfs.py) under a key made of every input
(the release, the packages, the hook, the boot script, gitroot's sources,
the test inits), and rebuilt only when one changes.  What the guest should
report (its Debian version, kernel, pygit2 version) is read from the built
root, not written here.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager

import pytest

from tests.conftest import REPO_ROOT, gitroot_cmd
from tests.rootfs import debian_minbase
from tests.system.imagecache import build_key, cached_build, run

QEMU = "qemu-system-x86_64"
RELEASES = os.environ.get("GITROOT_BOOT_RELEASES", "trixie bookworm").split()
ROOT_PACKAGES = ("linux-image-amd64,initramfs-tools,python3-pygit2,python3-fusepy,"
                 "python3-cffi-backend,python3-yaml,ca-certificates,busybox,zstd")
# Debian 13 renamed libfuse2 (64-bit time_t) and made `fuse` a transitional
# package for fuse3; a release not named here gets trixie's names.
FUSE_PACKAGES = {"bookworm": "fuse,libfuse2", "trixie": "fuse3,libfuse2t64"}
BUILD_FORMAT = "2"          # bump to throw away cached builds
BOOT_TIMEOUT = 300
MARK = "GITROOT-TEST:"
TEST_INIT = "/usr/local/sbin/gitroot-test-init"

# PID 1 of the good release: what the boot made, seen from the booted system.
GOOD_INIT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "GITROOT-TEST: $*"; }
say "good release init running"
say "debian $(cat /etc/debian_version)"
say "kernel $(uname -r)"
say "booted $(cat /run/gitroot/booted)"
say "root-mount $(grep '^[^ ]* / ' /proc/mounts)"
say "lower-mount $(grep ' /run/gitroot/lower ' /proc/mounts)"
pid=$(cat /run/gitroot/daemon.pid)
say "daemon-argv $(tr '\0' ' ' </proc/"$pid"/cmdline)"
say "daemon-root $(readlink /proc/"$pid"/root)"
say "setuid $(stat -c '%a %U:%G %n' /usr/bin/su)"
say "mtime $(stat -c '%Y %n' /etc/debian_version)"
say "python $(python3 -c 'import json, pygit2, fusepy; print(json.dumps(pygit2.__version__))')"
echo "written after switch_root" >/gitroot-test-file && say "write $(cat /gitroot-test-file)"
say "state $(tr -d '\n' </run/gitroot/medium/gitroot/state/state.json)"
say "done"
sync
echo o >/proc/sysrq-trigger
sleep 30
"""

# PID 1 of the broken release: it exits, so the kernel panics and (with
# panic=-1 and -no-reboot) QEMU exits, before anything could mark it good.
BROKEN_INIT = r"""#!/bin/sh
echo "GITROOT-TEST: broken release init running"
echo "GITROOT-TEST: booted $(cat /run/gitroot/booted)"
exit 1
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, chroot, mkfs)"),
    pytest.mark.skipif(shutil.which(QEMU) is None,
                       reason=f"{QEMU} is not installed (apt-get install qemu-system-x86)"),
    pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs"),
]


# -- building the kernel, initrd and releases (cached) -------------------

def _packages(release: str) -> str:
    return ROOT_PACKAGES + "," + FUSE_PACKAGES.get(release, FUSE_PACKAGES["trixie"])


def _build_key(release: str) -> str:
    return build_key((BUILD_FORMAT, release, _packages(release), GOOD_INIT, BROKEN_INIT))


@contextmanager
def _chroot_mounts(root):
    """/proc, /sys and /dev for commands run in *root*; always unmounted."""
    done = []
    try:
        for args, where in ((["-t", "proc", "proc"], "proc"),
                            (["-t", "sysfs", "sysfs"], "sys"),
                            (["--bind", "/dev"], "dev")):
            target = os.path.join(root, where)
            run("mount", *args, target)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-l", target], check=False)


def _install(root: str) -> None:
    """gitroot, the hook, the boot script and the test init, as an image would."""
    shutil.copytree(os.path.join(REPO_ROOT, "gitroot"),
                    os.path.join(root, "usr/lib/python3/dist-packages/gitroot"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    hook = os.path.join(root, "usr/share/initramfs-tools/hooks/gitroot")
    shutil.copy(os.path.join(REPO_ROOT, "hooks", "gitroot"), hook)
    os.chmod(hook, 0o755)
    script = os.path.join(root, "usr/share/initramfs-tools/scripts/gitroot")
    shutil.copy(os.path.join(REPO_ROOT, "initramfs", "gitroot"), script)
    os.chmod(script, 0o644)
    # the medium is ext4: this makes initramfs-tools' fsck hook copy e2fsck
    with open(os.path.join(root, "etc/initramfs-tools/conf.d/gitroot"), "w") as f:
        f.write("FSTYPE=ext4\n")
    _write_init(root, GOOD_INIT)


def _write_init(root: str, text: str) -> None:
    path = root + TEST_INIT
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def _build(dest: str, release: str) -> None:
    base = debian_minbase(release, include=_packages(release))
    work = dest + ".building"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    root = os.path.join(work, "root")
    run("cp", "-a", base, root)
    for deb in glob.glob(os.path.join(root, "var/cache/apt/archives/*.deb")):
        os.unlink(deb)
    _install(root)
    (version,) = os.listdir(os.path.join(root, "lib/modules"))
    initrd = os.path.join(root, "boot", f"initrd.img-{version}")
    if os.path.exists(initrd):
        os.unlink(initrd)
    with _chroot_mounts(root):
        run("chroot", root, "python3", "-m", "compileall", "-q",
             "/usr/lib/python3/dist-packages/gitroot")
        run("chroot", root, "update-initramfs", "-c", "-k", version)
        pygit2_version = run("chroot", root, "python3", "-c",
                              "import pygit2; print(pygit2.__version__)").stdout.strip()
    shutil.copy(os.path.join(root, "boot", f"vmlinuz-{version}"), os.path.join(work, "vmlinuz"))
    shutil.copy(initrd, os.path.join(work, "initrd.img"))

    repo = os.path.join(work, "medium", "gitroot", "repo.git")
    good = gitroot_cmd("commit", root, "--repo", repo, "--branch", "main",
                       "-m", "good release").stdout.strip()
    _write_init(root, BROKEN_INIT)
    broken = gitroot_cmd("commit", root, "--repo", repo, "--branch", "main",
                         "-m", "broken release: init exits").stdout.strip()
    with open(os.path.join(root, "etc/debian_version")) as f:
        debian_version = f.read().strip()
    info = {
        "release": release,
        "debian_version": debian_version,
        "pygit2_version": pygit2_version,
        "kernel_version": version,
        "good": good,
        "broken": broken,
        "debian_version_mtime": int(os.stat(os.path.join(root, "etc/debian_version")).st_mtime),
    }
    with open(os.path.join(work, "build.json"), "w") as f:
        json.dump(info, f)
    shutil.rmtree(root)
    os.rename(work, dest)


@pytest.fixture(scope="module", params=RELEASES)
def built(request):
    """The cached build for one guest release: kernel, initrd, a repository
    with both releases."""
    release = request.param
    return cached_build(f"boot-{release}", _build_key(release),
                        lambda dest: _build(dest, release))


# -- the persistent medium and QEMU --------------------------------------

def _device(medium, *args, run_dir):
    repo = os.path.join(medium, "gitroot", "repo.git")
    state = os.path.join(medium, "gitroot", "state")
    env = dict(os.environ, GITROOT_RUN_DIR=str(run_dir), GITROOT_CMDLINE="",
               PYTHONPATH=REPO_ROOT)
    return gitroot_cmd(*args, "--config", "/dev/null", "--repo", repo, "--state-dir", state,
                       env=env)


def make_disk(built, tmp_path, trial=None):
    """An ext4 image: the repository, last good = the good release, *trial* pinned."""
    medium = tmp_path / "medium"
    # hard links: gitroot's commands replace refs and state files, never
    # write into an existing file, so the cached repository stays as it is
    run("cp", "-al", os.path.join(built["dir"], "medium"), medium)
    run_dir = tmp_path / "run"
    _device(medium, "pin", built["good"], "--tries", "1", run_dir=run_dir)
    _device(medium, "mark-good", "--booted", built["good"], run_dir=run_dir)
    if trial:
        _device(medium, "pin", trial, "--tries", "1", run_dir=run_dir)
    return _make_image(medium, tmp_path)


def _make_image(medium, where):
    size = run("du", "-sm", medium).stdout.split()[0]
    image = where / "disk.img"
    run("mkfs.ext4", "-q", "-L", "gitroot", "-d", medium, image, f"{int(size) * 3 // 2 + 64}M")
    return image


def boot(built, image, log_path, extra_cmdline=""):
    """Boot once; returns (serial output, seconds).  QEMU ends by itself:
    the test init powers off, a panic reboots and -no-reboot exits."""
    # no_timer_check: on a loaded host, TCG can be too slow for the kernel's
    # IO-APIC timer check, which then panics before anything of ours runs
    cmdline = ("console=ttyS0 boot=gitroot gitroot.root=/dev/vda gitroot.rootfstype=ext4 "
               f"init={TEST_INIT} panic=-1 no_timer_check {extra_cmdline}").strip()
    cmd = [QEMU, "-nodefaults", "-display", "none", "-no-reboot", "-m", "1024", "-smp", "2",
           "-accel", "tcg", "-serial", f"file:{log_path}",
           "-kernel", os.path.join(built["dir"], "vmlinuz"),
           "-initrd", os.path.join(built["dir"], "initrd.img"),
           "-append", cmdline,
           "-drive", f"file={image},format=raw,if=virtio"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"QEMU still running after {BOOT_TIMEOUT} s; serial output:\n"
                             + _tail(log_path))
    elapsed = time.monotonic() - started
    with open(log_path, errors="replace") as f:
        serial = f.read()
    assert proc.returncode == 0, f"QEMU exited {proc.returncode}: {out!r}\n{_tail(log_path)}"
    return serial, elapsed


def _tail(path, lines=80):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no serial output)"


def reports(serial):
    """The test init's lines: {key: value} (the first word after the mark is the key)."""
    out = {}
    for line in serial.splitlines():
        line = line.strip().replace("\r", "")
        if line.startswith(MARK):
            key, _, value = line[len(MARK):].strip().partition(" ")
            out.setdefault(key, value)
    return out


# -- the boots -----------------------------------------------------------

def check_good_boot(built, serial, reason):
    got = reports(serial)
    assert "good" in got, "the good release's init never ran:\n" + serial[-4000:]
    booted = json.loads(got["booted"])
    assert booted["commit"] == built["good"]
    assert booted["reason"] == reason
    # the root is an overlay whose lower layer is the jailed FUSE daemon
    assert got["root-mount"].split()[2] == "overlay"
    assert "lowerdir=/run/gitroot/lower" in got["root-mount"]
    assert got["lower-mount"].split()[2] == "fuse.gitroot"
    assert got["daemon-argv"].startswith("@")
    assert got["daemon-root"] == "/run/gitroot/jail"
    # metadata from the manifest: setuid bit and owner, mtime
    assert got["setuid"] == "4755 root:root /usr/bin/su"
    assert got["mtime"] == f"{built['debian_version_mtime']} /etc/debian_version"
    # the guest is the release that was built, on its own kernel
    assert got["debian"] == built["debian_version"]
    assert got["kernel"] == built["kernel_version"]
    # files read for the first time after switch_root (the daemon lives on)
    assert got["python"] == json.dumps(built["pygit2_version"])
    assert got["write"] == "written after switch_root"
    assert "done" in got
    return got


def test_boot_the_last_good_release(built, tmp_path):
    image = make_disk(built, tmp_path)
    serial, elapsed = boot(built, image, tmp_path / "serial.log")
    print(f"boot took {elapsed:.1f} s under TCG")
    got = check_good_boot(built, serial, "last-good")
    state = json.loads(got["state"])
    assert state["last_good"] == built["good"] and state["trial"] is None
    assert re.search(r"gitroot: booting [0-9a-f]{40} \(last-good\)", serial)


def test_broken_trial_falls_back_to_the_last_good_release(built, tmp_path):
    image = make_disk(built, tmp_path, trial=built["broken"])

    # first boot: the trial's one try; its init exits and the kernel panics
    serial, elapsed = boot(built, image, tmp_path / "serial-1.log")
    print(f"broken boot took {elapsed:.1f} s under TCG")
    got = reports(serial)
    assert "broken" in got, serial[-4000:]
    booted = json.loads(got["booted"])
    assert booted["commit"] == built["broken"] and booted["reason"] == "trial"
    assert "Attempted to kill init" in serial
    assert "good" not in got

    # second boot, nobody touched the disk: back on the last good release
    serial, elapsed = boot(built, image, tmp_path / "serial-2.log")
    print(f"fallback boot took {elapsed:.1f} s under TCG")
    got = check_good_boot(built, serial, "last-good")
    booted = json.loads(got["booted"])
    assert "abandoned after 1 tries" in booted["detail"]
    state = json.loads(got["state"])
    assert state["last_good"] == built["good"]
    assert state["trial"] is None
    assert state["abandoned"]["commit"] == built["broken"]


def _medium_with_state(built, tmp_path, make_state):
    """A disk whose state is written behind gitroot's back by *make_state*
    (repo, good commit) -> State (pin refuses what it cannot mount)."""
    import pygit2
    from gitroot.boot.state import StateStore

    image_dir = tmp_path / "disk"
    image_dir.mkdir()
    medium = image_dir / "medium"
    run("cp", "-al", os.path.join(built["dir"], "medium"), medium)
    run_dir = tmp_path / "run"
    _device(medium, "pin", built["good"], "--tries", "1", run_dir=run_dir)
    _device(medium, "mark-good", "--booted", built["good"], run_dir=run_dir)
    repo = pygit2.Repository(str(medium / "gitroot" / "repo.git"))
    store = StateStore(str(medium / "gitroot" / "state"))
    store.save(make_state(repo, store.load()), "pin", "test", None, "made by the test")
    return _make_image(medium, image_dir)


def test_missing_trial_falls_back_within_the_boot(built, tmp_path):
    """A trial whose commit is not in the repository costs no reboot and no
    mount attempt: boot-select abandons it and answers the last good release."""
    from gitroot.boot.transitions import schedule_trial

    missing = "0123456789abcdef0123456789abcdef01234567"
    image = _medium_with_state(built, tmp_path, lambda repo, state: schedule_trial(
        state, missing, 2, hold=True, now=time.time()))
    serial, elapsed = boot(built, image, tmp_path / "serial.log")
    print(f"boot past a missing trial took {elapsed:.1f} s under TCG")
    assert f"mounting {missing}" not in serial, serial[-4000:]
    got = check_good_boot(built, serial, "last-good")
    assert "cannot be booted (missing) and was abandoned" in json.loads(got["booted"])["detail"]
    state = json.loads(got["state"])
    assert state["abandoned"]["commit"] == missing and state["trial"] is None


def test_unmountable_last_good_falls_back_to_the_previous_good(built, tmp_path):
    """A last good release that is present but cannot be mounted (here: a
    commit without a manifest) no longer stops the boot: the boot script names
    it to boot-select with --unusable and boots the previous good release."""
    from dataclasses import replace

    import pygit2
    unmountable = []

    def make_state(repo, state):
        who = pygit2.Signature("test", "test@example.invalid")
        empty_tree = repo.TreeBuilder().write()
        commit = str(repo.create_commit(None, who, who, "no manifest\n", empty_tree, []))
        unmountable.append(commit)
        return replace(state, last_good=commit, previous_good=built["good"])

    image = _medium_with_state(built, tmp_path, make_state)
    serial, elapsed = boot(built, image, tmp_path / "serial.log")
    print(f"boot past an unmountable last good release took {elapsed:.1f} s under TCG")
    assert f"mounting {unmountable[0]} (last-good)" in serial, serial[-4000:]
    assert f"last-good release {unmountable[0]} cannot be mounted" in serial
    check_good_boot(built, serial, "previous-good")
