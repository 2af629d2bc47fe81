"""Boot loader entries: the boot path's agreement with the loader (a table),
GRUB's grub.cfg and grubenv, systemd-boot's counted entries, and the sync
from a device state to the loader's files (on a real repository in tmp_path)."""

import os
import shutil
import subprocess

import pytest

from gitroot.boot.state import State, Trial
from gitroot.boot.transitions import choose_boot
from gitroot.device.bootloader import (LoaderStatus, TrialCounter, loader_gave_up,
                                       sync_boot_loader)
from gitroot.device.bootloader.grub import Grub, format_env, grub_cfg, parse_env
from gitroot.device.bootloader.systemd_boot import SystemdBoot

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)


def trial(commit, left, tries=3):
    return Trial(commit, left, tries, 0.0)


# state, update-revision, gitroot.commit -> commit, reason, state after
AGREE = [
    # the loader boots the trial: it is booted and the state's try consumed
    (State(last_good=A, trial=trial(B, 3)), None, B, B, "trial",
     State(last_good=A, trial=trial(B, 2))),
    # the loader's count and the state's may differ (a kernel that panicked
    # before the initramfs): the loader still decides, the count stays >= 0
    (State(last_good=A, trial=trial(B, 0)), None, B, B, "trial",
     State(last_good=A, trial=trial(B, 0))),
    # the loader fell back with the trial's tries used up: abandoned
    (State(last_good=A, trial=trial(B, 0)), None, A, A, "last-good",
     State(last_good=A, abandoned=trial(B, 0))),
    # the loader boots the last good release while the trial still has
    # tries (it does not know the trial yet, or a person chose): nothing lost
    (State(last_good=A, trial=trial(B, 2)), None, A, A, "last-good",
     State(last_good=A, trial=trial(B, 2))),
    # the previous good release chosen in the menu: booted, nothing changes
    (State(last_good=A, previous_good=C), None, C, C, "loader",
     State(last_good=A, previous_good=C)),
    (State(last_good=A), None, D, D, "loader", State(last_good=A)),
    # update-revision= on the entry wins over the entry's own commit
    (State(last_good=A, trial=trial(B, 3)), C, B, C, "debug-pin",
     State(last_good=A, trial=trial(B, 3))),
    # without a loader: the initramfs's own counting, as before
    (State(last_good=A, trial=trial(B, 1)), None, None, B, "trial",
     State(last_good=A, trial=trial(B, 0))),
]


@pytest.mark.parametrize("state,pin,loader,commit,reason,after", AGREE)
def test_boot_path_agrees_with_the_loader(state, pin, loader, commit, reason, after):
    choice = choose_boot(state, pin, 0.0, loader_commit=loader)
    assert (choice.commit, choice.reason, choice.state) == (commit, reason, after)


# -- GRUB --------------------------------------------------------------------

def test_grubenv_round_trip_keeps_other_variables():
    block = format_env({"saved_entry": "x", "gitroot_trial": A, "gitroot_tries": "2"})
    assert len(block) == 1024 and block.startswith(b"# GRUB Environment Block\n")
    assert block.endswith(b"#")
    assert parse_env(block) == {"saved_entry": "x", "gitroot_trial": A, "gitroot_tries": "2"}


@pytest.mark.parametrize("data", [b"", b"garbage", b"\0" * 1024,
                                  b"# GRUB Environment Block\nno-equals\n###"])
def test_damaged_grubenv_reads_as_empty(data):
    assert parse_env(data) == {}


def _entries(cmdline="boot=gitroot"):
    from gitroot.device.bootloader import Entry
    return [Entry(B, "trial", f"gitroot/{B}/vmlinuz", f"gitroot/{B}/initrd.img",
                  f"{cmdline} gitroot.commit={B}"),
            Entry(A, "last-good", f"gitroot/{A}/vmlinuz", None, f"{cmdline} gitroot.commit={A}")]


def test_grub_cfg_counts_the_trial_down_and_falls_back():
    cfg = grub_cfg(_entries(), TrialCounter(B, 3))
    assert "set default=gitroot-last-good" in cfg
    assert f'if [ "$gitroot_trial" = "{B}" ]; then' in cfg
    for left in (3, 2, 1):
        assert f'[ "$gitroot_tries" = "{left}" ]; then\n    set gitroot_tries={left - 1}' in cfg
    assert '"0" ]' not in cfg           # no tries left: the default stays last good
    assert "save_env gitroot_tries" in cfg
    assert f"linux ${{gitroot_boot}}/gitroot/{B}/vmlinuz boot=gitroot gitroot.commit={B}" in cfg
    assert f"initrd ${{gitroot_boot}}/gitroot/{B}/initrd.img" in cfg
    assert "serial" not in cfg
    assert "terminal_output console serial" in grub_cfg(_entries("console=ttyS0"), None)


def test_grub_cfg_without_a_trial_never_loads_the_counter():
    cfg = grub_cfg(_entries()[1:], None)
    assert "load_env" not in cfg and "save_env" not in cfg


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="needs grub-common")
def test_grub_cfg_is_valid_grub_script(tmp_path):
    path = tmp_path / "grub.cfg"
    path.write_text(grub_cfg(_entries("console=ttyS0 panic=5"), TrialCounter(B, 2)))
    proc = subprocess.run(["grub-script-check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("grub-editenv") is None, reason="needs grub-common")
def test_grubenv_is_read_by_grub_editenv(tmp_path):
    loader = Grub(str(tmp_path))
    loader.write(_entries(), TrialCounter(B, 2))
    proc = subprocess.run(["grub-editenv", loader.env_path, "list"], capture_output=True,
                          text=True, check=True)
    assert sorted(proc.stdout.split()) == [f"gitroot_trial={B}", "gitroot_tries=2"]
    # and what GRUB's own tool writes, gitroot reads
    subprocess.run(["grub-editenv", loader.env_path, "set", "gitroot_tries=0"], check=True)
    assert loader.trial_counter() == TrialCounter(B, 0)


def test_grub_refuses_a_cmdline_its_script_would_expand(tmp_path):
    from gitroot.device.bootloader import BootLoaderError
    with pytest.raises(BootLoaderError, match="GRUB"):
        Grub(str(tmp_path)).write(_entries("init=$HOME"), None)


def test_grub_status(tmp_path):
    loader = Grub(str(tmp_path))
    loader.write(_entries(), TrialCounter(B, 2))
    assert loader.status() == LoaderStatus("grub", B, "trial", TrialCounter(B, 2),
                                           {"trial": B, "last-good": A})
    Grub(str(tmp_path)).write_env({"gitroot_trial": B, "gitroot_tries": "0"})
    status = loader.status()
    assert (status.default, status.default_role) == (A, "last-good")


# -- systemd-boot --------------------------------------------------------------

def test_systemd_boot_entries_count_in_the_file_name(tmp_path):
    loader = SystemdBoot(str(tmp_path))
    loader.write(_entries(), TrialCounter(B, 3))
    entries = tmp_path / "loader" / "entries"
    assert sorted(os.listdir(entries)) == [f"gitroot-{A}.conf", f"gitroot-{B}+3.conf"]
    text = (entries / f"gitroot-{B}+3.conf").read_text()
    assert f"linux /gitroot/{B}/vmlinuz\n" in text
    assert f"options boot=gitroot gitroot.commit={B}\n" in text
    assert "sort-key gitroot-0-trial" in text
    # systemd-boot counted one try: gitroot keeps its counter when it rewrites
    os.rename(entries / f"gitroot-{B}+3.conf", entries / f"gitroot-{B}+2-1.conf")
    loader.write(_entries(), TrialCounter(B, 3))
    assert sorted(os.listdir(entries)) == [f"gitroot-{A}.conf", f"gitroot-{B}+2-1.conf"]
    assert loader.status().default == B
    # out of tries: the loader boots the last good release
    os.rename(entries / f"gitroot-{B}+2-1.conf", entries / f"gitroot-{B}+0-3.conf")
    assert loader.trial_counter() == TrialCounter(B, 0)
    assert loader.status().default == A
    # marked good: the entry loses its counter, others go
    from gitroot.device.bootloader import Entry
    loader.write([Entry(B, "last-good", f"gitroot/{B}/vmlinuz", None, "x")], None)
    assert os.listdir(entries) == [f"gitroot-{B}.conf"]


# -- the sync from a state -----------------------------------------------------

@pytest.fixture
def releases(tmp_path):
    """A repository with three releases, each with its own kernel and initrd."""
    from tests.conftest import gitroot_cmd
    repo = str(tmp_path / "repo.git")
    commits = []
    for n in range(3):
        src = tmp_path / f"src{n}"
        (src / "boot").mkdir(parents=True)
        (src / "boot" / f"vmlinuz-6.1.0-{n}").write_bytes(b"kernel %d" % n)
        (src / "boot" / f"initrd.img-6.1.0-{n}").write_bytes(b"initrd %d" % n)
        commits.append(gitroot_cmd("commit", src, "--repo", repo, "--branch", "main",
                                   "-m", f"r{n}").stdout.strip())
    import pygit2
    return pygit2.Repository(repo), commits


@pytest.mark.parametrize("kind", ["grub", "systemd-boot"])
def test_sync_installs_kept_releases_and_writes_their_entries(tmp_path, releases, kind):
    repo, (r0, r1, r2) = releases
    boot = str(tmp_path / "boot")
    state = State(last_good=r1, previous_good=r0, trial=trial(r2, 2))
    status = sync_boot_loader(repo, state, r1, kind, boot, "boot=gitroot")
    assert status.default == r2 and status.trial == TrialCounter(r2, 2)
    assert status.entries == {"trial": r2, "last-good": r1, "previous-good": r0}
    for n, commit in enumerate((r0, r1, r2)):
        with open(os.path.join(boot, "gitroot", commit, "vmlinuz"), "rb") as f:
            assert f.read() == b"kernel %d" % n
    # the trial marked good: r0 is neither kept role any more and goes
    status = sync_boot_loader(repo, State(last_good=r2, previous_good=r1), r2, kind, boot,
                              "boot=gitroot")
    assert status.entries == {"last-good": r2, "previous-good": r1} and status.trial is None
    assert sorted(os.listdir(os.path.join(boot, "gitroot"))) == sorted([r1, r2])


def test_sync_flushes_before_the_entries_only_what_it_installed(tmp_path, releases,
                                                                 monkeypatch):
    """The medium is flushed after new kernels and initrds (before an entry
    names them) and after the entries; a sync that installs nothing, as the
    mark-good of every boot, flushes once."""
    import gitroot.device.bootloader as bootloader
    flushed = []
    monkeypatch.setattr(bootloader, "flush_for_loader", lambda d: flushed.append(d))
    repo, (r0, r1, r2) = releases
    boot = str(tmp_path / "boot")
    sync_boot_loader(repo, State(last_good=r1, previous_good=r0), r1, "systemd-boot", boot, "")
    assert flushed == [boot, boot]
    flushed.clear()
    sync_boot_loader(repo, State(last_good=r1, previous_good=r0), r1, "systemd-boot", boot, "")
    assert flushed == [boot]
    flushed.clear()
    sync_boot_loader(repo, State(last_good=r1, previous_good=r0, trial=trial(r2, 3)), r1,
                     "systemd-boot", boot, "")
    assert flushed == [boot, boot]


def test_sync_never_hands_the_loader_back_tries(tmp_path, releases):
    repo, (r0, r1, r2) = releases
    boot = str(tmp_path / "boot")
    state = State(last_good=r1, trial=trial(r2, 3))
    sync_boot_loader(repo, state, r1, "grub", boot, "")
    Grub(boot).write_env({"gitroot_trial": r2, "gitroot_tries": "1"})     # GRUB counted
    status = sync_boot_loader(repo, state, r1, "grub", boot, "")
    assert status.trial == TrialCounter(r2, 1)
    # the loader used them all and booted the last good release
    Grub(boot).write_env({"gitroot_trial": r2, "gitroot_tries": "0"})
    assert loader_gave_up("grub", boot, state, booted=r1)
    assert not loader_gave_up("grub", boot, state, booted=r2)
    assert not loader_gave_up("none", boot, state, booted=r1)


def test_sync_without_a_kernel_anywhere_is_an_error(tmp_path):
    from tests.conftest import gitroot_cmd
    import pygit2
    from gitroot.device.bootloader import BootLoaderError
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    repo = str(tmp_path / "repo.git")
    commit = gitroot_cmd("commit", src, "--repo", repo, "--branch", "main",
                         "-m", "no kernel").stdout.strip()
    with pytest.raises(BootLoaderError, match="has a kernel"):
        sync_boot_loader(pygit2.Repository(repo), State(last_good=commit), commit, "grub",
                         str(tmp_path / "boot"), "")
