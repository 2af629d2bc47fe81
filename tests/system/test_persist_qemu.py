"""Persistent data across reboots, an upgrade and a rollback, in QEMU.

The build of tests/system/test_boot_qemu.py (Debian's kernel, the real
initramfs made by update-initramfs with the hook and boot script, a test
script as PID 1, ``-kernel``), with two signed releases and a device
configuration that trusts their key:

- release 1: ``/etc/gitroot-test.conf`` (a=1, b=2, c=3), ``/etc/conflict.conf``
  (x=1), ``/etc/motd``; no migrations.
- release 2: c=30 in gitroot-test.conf (a line the device leaves alone),
  x=2 in conflict.conf (which the device changes too), a new motd, and the
  migration ``20250101000000-two`` (up and down append to a log under /var).

One disk, four boots, each driven by ``persisttest=STEP`` on the kernel
command line (the init does what a user and the systemd units would do):

1. ``first`` (release 1): write a file under /var, change a=10 and x=9 in
   /etc; pin release 2.
2. ``upgrade`` (release 2, a trial): /var file kept, a=10 merged with c=30,
   conflict.conf kept as x=9 with .rej (x=2) and .orig (x=1), motd new, same
   machine-id; ``gitroot migrate`` runs up once, ``gitroot status`` shows
   the conflict, mark-good, rollback.
3. ``rollback`` (release 1 again, so also a plain reboot of it): release 1's
   own /etc with the first boot's changes is back (c=3, no .rej), the /var
   file and the machine-id too; ``gitroot migrate`` runs the stored down;
   mark-good.
4. ``kiosk`` (release 1, ``gitroot.persist=off``): the release's /etc and
   /var as published, nothing of the device's, the same machine-id.

The build is cached like test_boot_qemu's (key: every input).  The boots run
only with Debian's python3 (not in the .venv pass of .ci/test): the guest
runs Debian's packages either way, so a second pass would boot the same
images again for nothing.
"""

import glob
import json
import os
import shutil

import pytest

from tests.conftest import REPO_ROOT, gitroot_cmd
from tests.rootfs import debian_minbase
from tests.system.imagecache import build_key, cached_build, run
from tests.system.test_boot_qemu import (QEMU, TEST_INIT, _chroot_mounts, _device, _make_image,
                                         _packages, boot, reports)

# One guest release: what is tested here does not differ between Debian 12
# and 13 (test_boot_qemu boots both).  python3-cryptography: the guest
# checks the releases' SSH signatures before it runs a migration.
RELEASE = os.environ.get("GITROOT_PERSIST_RELEASE", "bookworm")
PACKAGES = _packages(RELEASE) + ",python3-cryptography"
BUILD_FORMAT = "1"
MIGRATION = "20250101000000-two"

INIT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "GITROOT-TEST: $*"; }
g() { python3 -m gitroot "$@" 2>&1 | tr '\n' ' '; }
step=$(sed -n 's/.*persisttest=\([a-z]*\).*/\1/p' /proc/cmdline)
say "step $step"
say "booted $(cat /run/gitroot/booted)"
say "machine-id $(cat /etc/machine-id)"
say "etc-mount $(grep -c ' /etc ' /proc/mounts)"
say "var-mount $(grep ' /var ' /proc/mounts | cut -d' ' -f3)"
say "var-file $(cat /var/lib/gitroot-test/file 2>/dev/null || echo none)"
say "conf $(tr '\n' ' ' </etc/gitroot-test.conf)"
say "conflict $(cat /etc/conflict.conf)"
say "conflict-rej $(cat /etc/conflict.conf.rej 2>/dev/null || echo none)"
say "conflict-orig $(cat /etc/conflict.conf.orig 2>/dev/null || echo none)"
say "motd $(cat /etc/motd)"
case "$step" in
first)
	mkdir -p /var/lib/gitroot-test
	echo "written at the first boot" >/var/lib/gitroot-test/file
	sed -i 's/^a=1$/a=10/' /etc/gitroot-test.conf
	echo x=9 >/etc/conflict.conf
	say "pin $(g pin main --tries 1)"
	;;
upgrade)
	say "migrate $(g migrate)"
	say "migrate-again $(g migrate)"
	say "migration-log $(tr '\n' ',' </var/lib/gitroot-test/migrations)"
	say "status $(python3 -m gitroot status --no-verify --json | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["persistence"]))')"
	say "status-text $(python3 -m gitroot status --no-verify | grep -A1 '^/etc:' | tr '\n' '|')"
	say "mark-good $(g mark-good)"
	say "rollback $(g rollback)"
	;;
rollback)
	say "migrate $(g migrate)"
	say "migration-log $(tr '\n' ',' </var/lib/gitroot-test/migrations)"
	say "mark-good $(g mark-good)"
	;;
kiosk)
	echo "kiosk write" >/var/lib/kiosk-file
	;;
esac
say "done"
sync
echo o >/proc/sysrq-trigger
sleep 30
"""

CONF_1 = "a=1\nb=2\nc=3\n"
CONF_2 = "a=1\nb=2\nc=30\n"
MIGRATION_SPEC = "name: two\ndescription: the log of release 2\nsnapshot:\n  - /var/lib/gitroot-test\n"
MIGRATION_SCRIPT = ("#!/bin/sh\nset -e\nmkdir -p /var/lib/gitroot-test\n"
                    'echo "$GITROOT_MIGRATION_DIRECTION $GITROOT_MIGRATION_ID" '
                    ">>/var/lib/gitroot-test/migrations\n")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, chroot, mkfs)"),
    pytest.mark.skipif(shutil.which(QEMU) is None,
                       reason=f"{QEMU} is not installed (apt-get install qemu-system-x86)"),
    pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs"),
]


def _build_key() -> str:
    return build_key((BUILD_FORMAT, RELEASE, PACKAGES, INIT, CONF_1, CONF_2, MIGRATION_SPEC,
                      MIGRATION_SCRIPT))


def _write(root, path, text, mode=0o644):
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    os.chmod(full, mode)


def _build(dest: str) -> None:
    base = debian_minbase(RELEASE, include=PACKAGES)
    work = dest + ".building"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    root = os.path.join(work, "root")
    run("cp", "-a", base, root)
    for deb in glob.glob(os.path.join(root, "var/cache/apt/archives/*.deb")):
        os.unlink(deb)
    shutil.copytree(os.path.join(REPO_ROOT, "gitroot"),
                    os.path.join(root, "usr/lib/python3/dist-packages/gitroot"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO_ROOT, "hooks", "gitroot"),
                os.path.join(root, "usr/share/initramfs-tools/hooks/gitroot"))
    os.chmod(os.path.join(root, "usr/share/initramfs-tools/hooks/gitroot"), 0o755)
    shutil.copy(os.path.join(REPO_ROOT, "initramfs", "gitroot"),
                os.path.join(root, "usr/share/initramfs-tools/scripts/gitroot"))
    _write(root, "/etc/initramfs-tools/conf.d/gitroot", "FSTYPE=ext4\n")
    key = os.path.join(work, "release-key")
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "release", "-f", key)
    with open(key + ".pub") as f:
        public = " ".join(f.read().split()[:2])
    _write(root, "/etc/gitroot/allowed_signers", f"release@example.org {public}\n")
    _write(root, "/etc/gitroot/gitroot.yml",
           "repository: /run/gitroot/medium/gitroot/repo.git\n"
           "state_dir: /run/gitroot/medium/gitroot/state\n"
           "trusted_keys:\n  allowed_signers: /etc/gitroot/allowed_signers\n"
           "signature_policy: strict\n")
    _write(root, TEST_INIT, INIT, 0o755)
    _write(root, "/etc/gitroot-test.conf", CONF_1)
    _write(root, "/etc/conflict.conf", "x=1\n")
    _write(root, "/etc/motd", "release 1\n")
    (version,) = os.listdir(os.path.join(root, "lib/modules"))
    initrd = os.path.join(root, "boot", f"initrd.img-{version}")
    if os.path.exists(initrd):
        os.unlink(initrd)
    with _chroot_mounts(root):
        run("chroot", root, "python3", "-m", "compileall", "-q",
             "/usr/lib/python3/dist-packages/gitroot")
        run("chroot", root, "update-initramfs", "-c", "-k", version)
    shutil.copy(os.path.join(root, "boot", f"vmlinuz-{version}"), os.path.join(work, "vmlinuz"))
    shutil.copy(initrd, os.path.join(work, "initrd.img"))

    repo = os.path.join(work, "medium", "gitroot", "repo.git")
    r1 = gitroot_cmd("commit", root, "--repo", repo, "--branch", "main", "--sign-key", key,
                     "-m", "release 1").stdout.strip()
    _write(root, "/etc/gitroot-test.conf", CONF_2)
    _write(root, "/etc/conflict.conf", "x=2\n")
    _write(root, "/etc/motd", "release 2\n")
    migration = f"/usr/lib/gitroot/migrations/{MIGRATION}"
    _write(root, f"{migration}/spec.yml", MIGRATION_SPEC)
    _write(root, f"{migration}/up", MIGRATION_SCRIPT, 0o755)
    _write(root, f"{migration}/down", MIGRATION_SCRIPT, 0o755)
    r2 = gitroot_cmd("commit", root, "--repo", repo, "--branch", "main", "--sign-key", key,
                     "-m", "release 2").stdout.strip()
    with open(os.path.join(work, "build.json"), "w") as f:
        json.dump({"kernel_version": version, "r1": r1, "r2": r2}, f)
    shutil.rmtree(root)
    os.rename(work, dest)


@pytest.fixture(scope="module")
def built():
    return cached_build(f"persist-{RELEASE}", _build_key(), _build)


def _boot(built, image, tmp_path, step, extra=""):
    serial, elapsed = boot(built, image, tmp_path / f"serial-{step}.log",
                           f"persisttest={step} {extra}".strip())
    print(f"boot {step} took {elapsed:.1f} s under TCG")
    got = reports(serial)
    assert got.get("step") == step and "done" in got, serial[-5000:]
    assert "unknown kernel command line option" not in serial
    assert "Traceback" not in serial, serial[-5000:]
    return got, serial


def test_state_survives_reboot_upgrade_and_rollback(built, tmp_path):
    r1, r2 = built["r1"], built["r2"]
    medium = tmp_path / "medium"
    run("cp", "-al", os.path.join(built["dir"], "medium"), medium)
    run_dir = tmp_path / "run"
    _device(medium, "pin", r1, "--tries", "1", run_dir=run_dir)
    _device(medium, "mark-good", "--booted", r1, run_dir=run_dir)
    image = _make_image(medium, tmp_path)

    # 1. first boot: the release's /etc, persistent /var; the device changes both
    got, serial = _boot(built, image, tmp_path, "first")
    assert json.loads(got["booted"])["commit"] == r1
    assert got["etc-mount"] == "1" and got["var-mount"] == "overlay"
    assert got["conf"] == "a=1 b=2 c=3" and got["var-file"] == "none"
    machine_id = got["machine-id"]
    assert len(machine_id) == 32 and int(machine_id, 16) > 0
    assert "pinned" in got["pin"]

    # 2. upgrade: /etc merged three ways, the conflict loud, the migration up once
    got, serial = _boot(built, image, tmp_path, "upgrade")
    booted = json.loads(got["booted"])
    assert booted["commit"] == r2 and booted["reason"] == "trial"
    assert "1 conflict(s) merging the device's changes" in serial
    assert got["var-file"] == "written at the first boot"
    assert got["conf"] == "a=10 b=2 c=30"
    assert got["conflict"] == "x=9"
    assert got["conflict-rej"] == "x=2" and got["conflict-orig"] == "x=1"
    assert got["motd"] == "release 2"
    assert got["machine-id"] == machine_id
    assert f"up {MIGRATION}" in got["migrate"]
    assert "nothing to do" in got["migrate-again"]
    assert got["migration-log"] == f"up {MIGRATION},"
    persistence = json.loads(got["status"])
    assert [c["path"] for c in persistence["etc"]["conflicts"]] == ["conflict.conf"]
    assert persistence["etc"]["merged_from"] == r1
    assert [m["id"] for m in persistence["migrations"]["applied"]] == [MIGRATION]
    assert "CONFLICT     /etc/conflict.conf" in got["status-text"]
    assert "is now the last good release" in got["mark-good"]
    assert f"next boot: previous good release {r1[:12]}" in got["rollback"]

    # 3. rollback (a reboot of release 1): its own /etc as the first boot left it,
    # the stored down script
    got, serial = _boot(built, image, tmp_path, "rollback")
    assert json.loads(got["booted"])["commit"] == r1
    assert got["conf"] == "a=10 b=2 c=3"
    assert got["conflict"] == "x=9" and got["conflict-rej"] == "none"
    assert got["motd"] == "release 1"
    assert got["var-file"] == "written at the first boot"
    assert got["machine-id"] == machine_id
    assert f"down {MIGRATION}" in got["migrate"]
    assert got["migration-log"] == f"up {MIGRATION},down {MIGRATION},"
    assert "is now the last good release" in got["mark-good"]

    # 4. kiosk: a fresh root, only the machine-id is the device's
    got, serial = _boot(built, image, tmp_path, "kiosk", "gitroot.persist=off")
    assert got["etc-mount"] == "0" and got["var-mount"] == ""
    assert got["var-file"] == "none"
    assert got["conf"] == "a=1 b=2 c=3" and got["conflict"] == "x=1"
    assert got["machine-id"] == machine_id
