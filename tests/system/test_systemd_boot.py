"""Real boots: a Debian systemd image through a boot loader from a disk, under QEMU.

The image is built as docs/boot.md says (tests/system/systemd_image.py:
debootstrap, ``gitroot install-image --bootloader LOADER``, ``gitroot
commit``, a medium made with ``pin``, ``mark-good``, ``pin --release``) and
booted from a partitioned disk image, with a second disk holding the
publisher's repository (the guest has no network): by SeaBIOS and GRUB
(Debian 13 and 12), or by OVMF and systemd-boot from a GPT disk with an
EFI system partition (Debian 13).  A unit in the image prints what the
booted system sees on the serial console and powers off; the test reads
it.  Each QEMU run is one boot; a reboot of the guest ends QEMU
(``-no-reboot``) and the test starts the next boot on the same disks (and,
under UEFI, the same variable store), as a power-on would.

Scenarios (issue 14), by default: 1 and 8 (v1 boots to multi-user, nothing
failed, status right, marked good; poweroff clean) through GRUB on Debian
13 and on Debian 12, and 1 through systemd-boot (a pinned trial counted by
the loader, blessed by systemd-bless-boot, marked good).  2 (boot-time
fetch of signed v2, whose kernel, initrd and root the loader then starts),
3 (through GRUB and through systemd-boot), 4, 5, 6 and 7, on Debian 13,
cost one to three more boots each (minutes under TCG) and run only with
``GITROOT_BOOT_SCENARIOS=all``.

The boots exercise the guest's packages, not the host's Python libraries,
so they run once: under Debian's /usr/bin/python3, not in .ci/test's venv.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.system import systemd_image as image

ALL = os.environ.get("GITROOT_BOOT_SCENARIOS") == "all"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, chroot, mkfs)"),
    pytest.mark.skipif(shutil.which(image.QEMU) is None,
                       reason=f"{image.QEMU} is not installed (apt-get install qemu-system-x86)"),
    pytest.mark.skipif(sys.prefix != sys.base_prefix,
                       reason="QEMU boots run once, with Debian's python3 (see the docstring)"),
]
every_scenario = pytest.mark.skipif(not ALL, reason="set GITROOT_BOOT_SCENARIOS=all")
needs_grub = pytest.mark.skipif(
    shutil.which("grub-mkimage") is None or
    not os.path.exists(os.path.join(image.GRUB_DIR, "boot.img")),
    reason="needs GRUB's BIOS images (apt-get install grub-pc-bin)")
needs_ovmf = pytest.mark.skipif(
    not os.path.exists(image.OVMF_CODE) or
    not all(shutil.which(tool) for tool in ("sfdisk", "mkfs.vfat", "mcopy")),
    reason="needs OVMF, sfdisk, mkfs.vfat and mcopy (apt-get install ovmf fdisk dosfstools "
           "mtools)")


@pytest.fixture(scope="module")
def built():
    """Debian 13 through GRUB: every scenario runs on it."""
    return image.build("trixie", "grub")


@pytest.fixture(scope="module")
def built_efi():
    """Debian 13 through systemd-boot under OVMF."""
    return image.build("trixie", "systemd-boot")


def boot(disks, efi: bool = False, **kwargs) -> image.Boot:
    # the serial console, timestamped, next to the disk (read it after a failure)
    where = os.path.dirname(str(disks[0]))
    n = len([name for name in os.listdir(where) if name.startswith("serial-")])
    if efi:
        kwargs["efi_vars"] = image.efi_variables(where)
    result = image.qemu_boot([str(d) for d in disks], timeout=1200,
                             log_path=os.path.join(where, f"serial-{n}.log"), **kwargs)
    print(f"boot took {result.elapsed:.1f} s under TCG")
    return result


def reported(result: image.Boot) -> dict:
    got = result.reports()
    assert "done" in got, "the report unit never finished:\n" + result.tail(120)
    return got


def medium_partition(disk: str, where) -> str:
    """A copy of the medium partition (after QEMU exited; no loop devices)."""
    part = os.path.join(str(where), "medium-check.img")
    image.run("dd", f"if={disk}", f"of={part}", "bs=1M",
              f"skip={image.medium_offset(disk) >> 20}", "conv=sparse", "status=none")
    return part


def medium_is_clean(disk: str, where) -> str:
    """fsck of the medium partition after QEMU exited, without loop devices."""
    part = medium_partition(disk, where)
    proc = subprocess.run(["e2fsck", "-fn", part], capture_output=True, text=True)
    state = image.run("dumpe2fs", "-h", part).stdout
    os.unlink(part)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return next(line.split(":", 1)[1].strip() for line in state.splitlines()
                if line.startswith("Filesystem state:"))


def medium_files(part: str, directory: str) -> list:
    """The names in *directory* of the medium (debugfs, read-only)."""
    out = image.run("debugfs", "-R", f"ls -l {directory}", part).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def medium_file(part: str, path: str) -> str:
    return image.run("debugfs", "-R", f"cat {path}", part).stdout


def check_booted(built, result, release, reason, kernel_of=None):
    """The loader started *release*'s kernel and initrd with its root."""
    got = reported(result)
    commit = built["commits"][release]
    kernel_of = kernel_of or release
    assert got["release"] == release
    assert f"gitroot.commit={built['commits'][kernel_of]}" in got["cmdline"]
    # the loader started the files of that release: GRUB's BOOT_IMAGE=
    # names the kernel, systemd-boot's initrd= the initrd
    started = {"grub": "vmlinuz", "systemd-boot": "initrd.img"}[built.get("loader", "grub")]
    assert f"/gitroot/{built['commits'][kernel_of]}/{started}" in got["cmdline"], got["cmdline"]
    if built.get("loader") == "systemd-boot":
        # and the entry systemd-boot says it started (its EFI variable)
        assert got["loader-entry"].startswith(f"gitroot-{built['commits'][kernel_of]}"), got
    status = result.json("status-json")
    assert status["booted"]["commit"] == commit
    assert status["booted"]["reason"] == reason
    assert got["root"] == "overlay"
    return got, status


def assert_trial_kept(got, status, v1, v2):
    """The trial v2 booted clean and was marked good over v1, and the loader
    boots it next without a counter."""
    assert got["failed"] == "", got["failed"]
    assert got["mark-good"] == "success active"
    assert status["last_good"] == v2 and status["previous_good"] == v1
    assert status["trial"] is None
    assert status["boot_loader"]["default"] == v2
    assert status["boot_loader"]["trial"] is None


# -- scenarios run by default ------------------------------------------------

@needs_grub
@pytest.mark.parametrize("release", ["trixie", "bookworm"])
def test_v1_boots_to_multi_user_marked_good_and_powers_off_clean(release, tmp_path):
    """Scenarios 1 and 8, on Debian 13 and 12."""
    built = image.build(release, "grub")
    disk = image.make_medium(built, str(tmp_path), good=["v1"])
    updates = image.updates_disk(built, str(tmp_path), "v1")
    result = boot([disk, updates])
    got, status = check_booted(built, result, "v1", "last-good")
    v1 = built["commits"]["v1"]
    assert got["debian"].startswith({"trixie": "13.", "bookworm": "12."}[release]), got["debian"]
    assert got["initrd"] == "v1"
    assert got["failed"] == "", got["failed"]
    assert got["mark-good"] == "success active"
    assert got["fetch"] == "success"
    assert status["last_good"] == v1 and status["trial"] is None and not status["hold"]
    assert status["last_fetch"]["result"] == "up-to-date"
    assert status["signatures"]["last_good"]["ok"]
    assert status["boot_loader"]["default"] == v1
    # the binding's metadata reached the initramfs (hooks/gitroot)
    assert "?" not in status["mount"]["binding"], status["mount"]
    assert status["boot_loader"]["default_role"] == "last-good"
    assert "boot loader:   grub, boots next: " + v1[:12] in got["status-text"]
    # the persistent /var is a unit systemd adopted (the boot script's unit
    # file), so what needs a path below it is bound to it: journald's flush
    # service, whose stop hands /var/log/journal back before the unmount
    assert got["var-mount"].startswith("/run/systemd/system/var.mount ")
    assert "var.mount" in got["var-mount"].split()[1:]
    # systemctl poweroff: no FAILED line, /var unmounted by the service
    # manager, the medium left clean
    shutdown = result.text[result.text.index("GITROOT-TEST: done"):]
    failed = [line for line in shutdown.splitlines() if "[FAILED]" in line]
    assert failed == [], shutdown
    assert "Unmounted var.mount" in shutdown, shutdown
    assert "Failed to unmount" not in shutdown.replace(
        "Failed to unmount /run/gitroot/medium:", ""), shutdown
    assert "reboot: Power down" in shutdown
    assert medium_is_clean(disk, tmp_path) == "clean"


@every_scenario
@needs_grub
def test_boot_time_fetch_of_v2_then_the_loader_starts_v2(built, tmp_path):
    """Scenario 2."""
    disk = image.make_medium(built, str(tmp_path), good=["v1"])
    updates = image.updates_disk(built, str(tmp_path), "v2")
    v1, v2 = built["commits"]["v1"], built["commits"]["v2"]

    result = boot([disk, updates])
    got, status = check_booted(built, result, "v1", "last-good")
    assert got["fetch"] == "success"
    assert status["last_fetch"]["result"] == "pinned", status["last_fetch"]
    assert "good signature" in status["last_fetch"]["verdict"] or status["last_fetch"]["verdict"]
    assert status["trial"]["commit"] == v2
    assert status["boot_loader"]["trial"] == {"commit": v2, "tries_left": 2}
    assert status["boot_loader"]["default"] == v2

    result = boot([disk, updates])
    got, status = check_booted(built, result, "v2", "trial")
    assert got["initrd"] == "v2"
    assert_trial_kept(got, status, v1, v2)
    assert set(status["boot_loader"]["entries"].values()) == {v1, v2}


# -- the rest: GITROOT_BOOT_SCENARIOS=all ------------------------------------

def _fails_then_falls_back(built, tmp_path, trial):
    """Boot a disk whose trial (2 tries) never becomes good; return the boots."""
    disk = image.make_medium(built, str(tmp_path), good=["v1", "v2"], trial=trial)
    updates = image.updates_disk(built, str(tmp_path), "v2")
    boots = [boot([disk, updates]) for _ in range(3)]
    return boots


@every_scenario
@needs_grub
def test_failing_health_check_trial_falls_back_kernel_and_root(built, tmp_path):
    """Scenario 3, a health check unit fails before boot-complete.target."""
    v2, v3 = built["commits"]["v2"], built["commits"]["v3-health"]
    first, second, third = _fails_then_falls_back(built, tmp_path, "v3-health")
    for result in (first, second):
        got, status = check_booted(built, result, "v3-health", "trial")
        assert "gitroot-test-health.service" in got["failed"]
        assert got["mark-good"] != "success active"
    got, status = check_booted(built, third, "v2", "last-good")
    assert got["initrd"] == "v2"
    assert status["trial"] is None and status["last_good"] == v2
    assert status["abandoned"]["commit"] == v3
    assert "abandoned after 2 tries" in status["booted"]["detail"]
    assert "abandoned:     " + v3[:12] in got["status-text"]
    abandon = [e for e in third.json("log-json") if e["action"] == "abandon"]
    assert abandon and abandon[-1]["commit"] == v3


@every_scenario
@needs_grub
def test_trial_without_init_reboots_and_falls_back(built, tmp_path):
    """Scenario 3, a release whose init cannot start: each try ends in a
    reboot (not a shell), then the loader starts v2 again."""
    v3 = built["commits"]["v3-noinit"]
    first, second, third = _fails_then_falls_back(built, tmp_path, "v3-noinit")
    for result in (first, second):
        assert f"trial {v3} has no init /sbin/init that can start; rebooting" in result.text, \
            result.tail(60)
        assert "can't access tty" not in result.text
        assert result.returncode == 0
    got, status = check_booted(built, third, "v2", "last-good")
    assert status["abandoned"]["commit"] == v3 and status["trial"] is None


@every_scenario
@needs_grub
def test_update_revision_boots_an_exact_commit_once(built, tmp_path):
    """Scenario 4: update-revision= on the entry's command line."""
    v1, v2 = built["commits"]["v1"], built["commits"]["v2"]
    disk = image.make_medium(built, str(tmp_path), good=["v1", "v2"],
                             cmdline=image.CMDLINE + f" update-revision={v1}")
    updates = image.updates_disk(built, str(tmp_path), "v2")
    got, status = check_booted(built, boot([disk, updates]), "v1", "debug-pin",
                               kernel_of="v2")
    assert status["last_good"] == v2      # not marked good
    assert got["mark-good"] != "success active"


@every_scenario
@needs_grub
def test_noupgrade_fetches_nothing(built, tmp_path):
    """Scenario 5: the update disk holds no repository, so a fetch that
    tried would fail; with noupgrade it never tries."""
    disk = image.make_medium(built, str(tmp_path), good=["v1"],
                             cmdline=image.CMDLINE + " noupgrade")
    updates = image.updates_disk(built, str(tmp_path), None)
    got, status = check_booted(built, boot([disk, updates]), "v1", "last-good")
    assert got["fetch"] == "success"
    assert got["failed"] == ""
    assert "skipped: noupgrade" in got["fetch-log"]
    assert status["last_fetch"]["result"] == "skipped"


@every_scenario
@needs_grub
def test_power_cut_during_a_fetch(built, tmp_path):
    """Scenario 6: QEMU is killed (no shutdown) while the boot-time fetch
    brings v2 from an update disk QEMU reads slowly; the medium recovers
    by its journal alone, the repository is whole, v1 boots again with
    nothing pinned, and that boot's fetch removes the partial pack and
    pins v2."""
    v1, v2 = built["commits"]["v1"], built["commits"]["v2"]
    disk = image.make_medium(built, str(tmp_path), good=["v1"])
    # pack.window=0: git sends v2's objects as they are stored, reading
    # them from the slow disk while it sends (a delta search would read
    # them all first, and then send 48 MB from memory in seconds)
    updates = image.updates_disk(built, str(tmp_path), "v2", git_config={"pack.window": "0"})
    # the cut comes 40 s after the partial pack was seen growing: long
    # enough for ext4 to have committed it (a cut in the first seconds
    # leaves nothing of it on the medium), far from the end of a transfer
    # of some 48 MB at 256 KiB/s
    cut = boot([disk, updates], slow_disks={updates: 256 * 1024},
               kill_after=image.MARK + " transfer under way", kill_delay=40)
    assert "transfer under way" in cut.text and image.MARK + " done" not in cut.text, \
        cut.tail(60)
    assert cut.returncode == -9

    # the medium as the power cut left it: the boot's own fsck (preen mode:
    # the journal replayed, the superblock's free counts, which ext4 does
    # not journal, recounted) repairs it without asking; the repository is
    # whole and nothing is pinned
    part = medium_partition(disk, tmp_path)
    proc = subprocess.run(["e2fsck", "-fp", part], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    image.run("e2fsck", "-fn", part)
    partial = [name for name in medium_files(part, "/gitroot/repo.git/objects/pack")
               if name.startswith("tmp_pack_")]
    assert partial, "no partial pack on the medium: the cut came too early or too late"
    repo = os.path.join(str(tmp_path), "repo-after-cut.git")
    os.mkdir(repo)
    image.run("debugfs", "-R", f"rdump /gitroot/repo.git {repo}", part)
    image.run("git", "--git-dir", os.path.join(repo, "repo.git"), "fsck", "--no-progress")
    state = json.loads(medium_file(part, "/gitroot/state/state.json"))
    assert state["last_good"] == v1 and state["trial"] is None
    assert v2 not in medium_file(part, "/boot/grub/grubenv")
    shutil.rmtree(repo)
    os.unlink(part)

    result = boot([disk, updates])
    got, status = check_booted(built, result, "v1", "last-good")
    assert got["failed"] == "", got["failed"]
    assert got["fetch"] == "success"
    assert "an interrupted fetch left" in got["fetch-log"] and partial[0] in got["fetch-log"]
    assert status["last_fetch"]["result"] == "pinned", status["last_fetch"]
    assert status["trial"]["commit"] == v2
    assert status["boot_loader"]["trial"] == {"commit": v2, "tries_left": 2}
    assert medium_is_clean(disk, tmp_path) == "clean"
    part = medium_partition(disk, tmp_path)
    assert not [name for name in medium_files(part, "/gitroot/repo.git/objects/pack")
                if name.startswith("tmp_")]
    os.unlink(part)


@every_scenario
@needs_grub
def test_unsigned_release_is_refused_at_boot(built, tmp_path):
    """Scenario 7."""
    disk = image.make_medium(built, str(tmp_path), good=["v1", "v2"])
    updates = image.updates_disk(built, str(tmp_path), "v4-unsigned")
    got, status = check_booted(built, boot([disk, updates]), "v2", "last-good")
    assert status["last_fetch"]["result"] == "refused"
    assert "sign" in status["last_fetch"]["message"]
    assert status["trial"] is None
    assert "last fetch:" in got["status-text"] and "refused" in got["status-text"]


# -- systemd-boot under OVMF (UEFI) ----------------------------------------

def esp_entries(disk: str) -> set:
    """The entry files on the disk's ESP after QEMU exited (mtools reads
    the partition in place, at its 1 MiB offset)."""
    listing = image.run("mdir", "-b", "-i", f"{disk}@@1M", "::/loader/entries",
                        env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout
    return {line.rsplit("/", 1)[-1] for line in listing.split() if line.endswith(".conf")}


@needs_ovmf
def test_systemd_boot_counts_blesses_and_marks_good_a_trial(built_efi, tmp_path):
    """Scenario 1 through systemd-boot: v2, pinned over the last good v1,
    is started by the loader from its counted entry (gitroot-V2+2.conf),
    reaches multi-user with nothing failed, is blessed by
    systemd-bless-boot at boot-complete.target and marked good by gitroot."""
    v1, v2 = built_efi["commits"]["v1"], built_efi["commits"]["v2"]
    disk = image.make_medium(built_efi, str(tmp_path), good=["v1"], trial="v2")
    assert esp_entries(disk) == {f"gitroot-{v2}+2.conf", f"gitroot-{v1}.conf"}
    updates = image.updates_disk(built_efi, str(tmp_path), "v2")
    result = boot([disk, updates], efi=True)
    got, status = check_booted(built_efi, result, "v2", "trial")
    assert got["initrd"] == "v2"                 # v2's own initrd, from the ESP
    # systemd-boot counted the try: it renamed +2 to +1-1 and said so
    # (LoaderBootCountPath), and systemd-bless-boot blessed that entry
    assert got["boot-count-path"] == f"/loader/entries/gitroot-{v2}+1-1.conf", got
    assert "Marked boot as 'good'" in got["bless-log"], got["bless-log"]
    assert got["bless"] == "success active"
    assert_trial_kept(got, status, v1, v2)
    assert "boot loader:   systemd-boot, boots next: " + v2[:12] in got["status-text"]
    assert set(got["esp-entries"].split()) == {f"gitroot-{v2}.conf", f"gitroot-{v1}.conf"}
    assert "reboot: Power down" in result.text
    # what the next power-on finds: blessed entries, a clean medium
    assert esp_entries(disk) == {f"gitroot-{v2}.conf", f"gitroot-{v1}.conf"}
    assert medium_is_clean(disk, tmp_path) == "clean"


@every_scenario
@needs_ovmf
def test_systemd_boot_falls_back_from_a_failing_trial(built_efi, tmp_path):
    """Scenario 3 through systemd-boot: a trial whose health check fails
    before boot-complete.target is never blessed; the loader tries it its
    two tries and then starts v2's entry, kernel and root, by itself."""
    v1, v2 = built_efi["commits"]["v1"], built_efi["commits"]["v2"]
    v3 = built_efi["commits"]["v3-health"]
    disk = image.make_medium(built_efi, str(tmp_path), good=["v1", "v2"], trial="v3-health")
    updates = image.updates_disk(built_efi, str(tmp_path), "v2")
    first, second, third = (boot([disk, updates], efi=True) for _ in range(3))
    for result, counted in ((first, "+1-1"), (second, "+0-2")):
        got, status = check_booted(built_efi, result, "v3-health", "trial")
        assert got["boot-count-path"] == f"/loader/entries/gitroot-{v3}{counted}.conf", got
        assert "gitroot-test-health.service" in got["failed"]
        assert got["bless"] != "success active"
        assert got["mark-good"] != "success active"
    got, status = check_booted(built_efi, third, "v2", "last-good")
    assert got["initrd"] == "v2"
    assert got["boot-count-path"] == ""          # v2's entry has no counter
    assert status["trial"] is None and status["last_good"] == v2
    assert status["abandoned"]["commit"] == v3
    assert status["boot_loader"]["default"] == v2
    # the abandoned trial's entry and files are gone from the ESP
    assert esp_entries(disk) == {f"gitroot-{v2}.conf", f"gitroot-{v1}.conf"}
