"""Boot loader integration: the kernel, initrd and entry of each kept release.

A device whose boot loader starts the release's own kernel keeps, where the
loader reads (``boot_dir``: the medium's ``boot`` directory for GRUB, the
ESP for systemd-boot, never the overlay), one directory per kept release::

    BOOT_DIR/gitroot/<commit>/vmlinuz
    BOOT_DIR/gitroot/<commit>/initrd.img

and one boot loader entry for each: the trial (with the loader's own try
counter), the booted release, the last good and the previous good release.
Every entry's command line is ``bootloader.cmdline`` from the configuration
plus ``gitroot.commit=<commit>``, which the initramfs mounts exactly, so a
kernel and its root always come and go together.

:func:`sync_boot_loader` derives everything from the state: it is called
after every change of the state (fetch, pin, mark-good, rollback, gc) and by
``gitroot boot-entries``, and it is idempotent, so a power cut between the
state and the loader's files is repaired by the next call.  The loader counts
the trial's tries itself; :func:`loader_gave_up` tells the booted system
when it fell back, so that the trial is abandoned in the state too.

Back ends (one module each, behind :class:`BootLoader`): ``grub``
(a generated ``grub.cfg`` with the trial and its tries in ``grubenv``) and
``systemd-boot`` (Boot Loader Specification type 1 entries with boot
counting in the file names).

Threading: callers hold the device's state lock; nothing here is shared.
"""

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional

from gitroot import atomic
from gitroot.boot.state import State
from gitroot.device.bootloader.flush import flush_for_loader
from gitroot.errors import GitrootError

log = logging.getLogger(__name__)

RELEASES_DIR = "gitroot"
KERNEL = "vmlinuz"
INITRD = "initrd.img"


class BootLoaderError(GitrootError):
    exit_code = 9


@dataclass(frozen=True)
class Entry:
    """One boot loader entry: a release's kernel, initrd and command line."""

    commit: str
    role: str           # trial | booted | last-good | previous-good
    kernel: str         # path relative to boot_dir
    initrd: Optional[str]
    cmdline: str


@dataclass(frozen=True)
class TrialCounter:
    commit: str
    tries: int          # tries the loader may still make


@dataclass(frozen=True)
class LoaderStatus:
    """What the boot loader will do next, as its own files say."""

    loader: str
    default: Optional[str]          # commit of the entry the loader boots next
    default_role: Optional[str]
    trial: Optional[TrialCounter]
    entries: Dict[str, str]         # role -> commit


class BootLoader:
    """The interface every back end implements."""

    name = "none"

    def __init__(self, boot_dir: str) -> None:
        self.boot_dir = boot_dir

    def write(self, entries: List[Entry], trial: Optional[TrialCounter]) -> None:
        """Make *entries* the loader's entries; *trial* boots next, with its tries."""
        raise NotImplementedError

    def status(self) -> LoaderStatus:
        raise NotImplementedError

    def trial_counter(self) -> Optional[TrialCounter]:
        """The trial the loader knows and its tries left, or None."""
        raise NotImplementedError


def write_file(path: str, data: bytes) -> None:
    """:func:`gitroot.atomic.write_file`, a failure worded for the operator."""
    try:
        atomic.write_file(path, data)
    except OSError as err:
        raise BootLoaderError(f"cannot write {path}: {err.strerror or err}") from None


def boot_loader(kind: str, boot_dir: str) -> Optional[BootLoader]:
    """The back end configured as ``bootloader.type`` (None for ``none``)."""
    if kind == "grub":
        from gitroot.device.bootloader.grub import Grub
        return Grub(boot_dir)
    if kind == "systemd-boot":
        from gitroot.device.bootloader.systemd_boot import SystemdBoot
        return SystemdBoot(boot_dir)
    return None


def release_dir(boot_dir: str, commit: str) -> str:
    return os.path.join(boot_dir, RELEASES_DIR, commit)


def is_installed(boot_dir: str, commit: str) -> bool:
    """Are *commit*'s kernel and initrd in BOOT_DIR/gitroot/<commit>/?"""
    target = release_dir(boot_dir, commit)
    return all(os.path.isfile(os.path.join(target, name)) for name in (KERNEL, INITRD))


def install_release(repo, commit: str, boot_dir: str) -> bool:
    """Copy *commit*'s kernel and initrd into BOOT_DIR/gitroot/<commit>/.

    Each file is written to a temporary name, fsynced and renamed, so a file
    that exists is whole; present files are not written again.  An initrd
    kept uncompressed in the release is compressed for the loader
    (:mod:`gitroot.device.initrd`).  Returns False when the release has no
    kernel in its /boot, or one past gitroot's bounds.
    """
    if is_installed(boot_dir, commit):
        return True
    target = release_dir(boot_dir, commit)
    from gitroot.device.bootfiles import _release_boot_files
    from gitroot.device.initrd import InitrdError
    try:
        files = _release_boot_files(repo, commit)
    except InitrdError as err:
        # the other kept releases still get their entries: a mark-good or
        # rollback must not fail for a release that cannot be installed
        log.warning("%s: no boot loader entry for it", err)
        return False
    if "vmlinuz" not in files:
        log.warning("release %s has no kernel in /boot: no boot loader entry for it",
                    commit[:12])
        return False
    write_file(os.path.join(target, KERNEL), files["vmlinuz"])
    if "initrd.img" in files:
        write_file(os.path.join(target, INITRD), files["initrd.img"])
    log.info("installed the kernel and initrd of %s into %s", commit[:12], target)
    return True


def _roles(state: State, booted: Optional[str]) -> List[tuple]:
    """(role, commit) in the order entries are listed, each commit once."""
    roles = []
    seen = set()
    for role, commit in (("trial", state.trial.commit if state.trial else None),
                         ("last-good", state.last_good),
                         ("booted", booted),
                         ("previous-good", state.previous_good)):
        if commit and commit not in seen:
            seen.add(commit)
            roles.append((role, commit))
    return roles


def entry_cmdline(base: str, commit: str) -> str:
    return f"{base} gitroot.commit={commit}".strip()


def sync_boot_loader(repo, state: State, booted: Optional[str], kind: str,
                     boot_dir: str, cmdline: str) -> Optional[LoaderStatus]:
    """Install the kept releases' boot files and write the loader's entries
    (see the module docstring).  Returns the loader's status afterwards, or
    None when no boot loader is configured."""
    loader = boot_loader(kind, boot_dir)
    if loader is None:
        return None
    entries = []
    wrote = False           # a kernel or initrd written here
    for role, commit in _roles(state, booted):
        present = is_installed(boot_dir, commit)
        if present or install_release(repo, commit, boot_dir):
            wrote = wrote or not present
            has_initrd = os.path.isfile(os.path.join(release_dir(boot_dir, commit), INITRD))
            entries.append(Entry(commit, role, f"{RELEASES_DIR}/{commit}/{KERNEL}",
                                 f"{RELEASES_DIR}/{commit}/{INITRD}" if has_initrd else None,
                                 entry_cmdline(cmdline, commit)))
    if not any(e.role in ("last-good", "booted") for e in entries) and entries:
        log.warning("no entry for a last good release: the loader has nothing to fall back to")
    if not entries:
        raise BootLoaderError(f"no release to write a {kind} entry for (none of the kept "
                              "releases has a kernel in /boot)")
    trial = None
    if state.trial is not None and any(e.role == "trial" for e in entries):
        known = loader.trial_counter()
        tries = state.trial.tries_left
        if known is not None and known.commit == state.trial.commit:
            # the loader has been counting this trial: never hand it back tries
            tries = min(tries, known.tries)
        trial = TrialCounter(state.trial.commit, tries)
    # the kernels and initrds home before an entry names them, the entries
    # home before this returns (GRUB reads ext4 without its journal: flush.py);
    # a mark-good at every boot installs nothing and pays no first flush
    if wrote:
        flush_for_loader(boot_dir)
    loader.write(entries, trial)
    flush_for_loader(boot_dir)
    _remove_others(boot_dir, {e.commit for e in entries})
    return loader.status()


def loader_gave_up(kind: str, boot_dir: str, state: State, booted: Optional[str]) -> bool:
    """Did the loader use up the trial's tries and boot something else?

    True when the trial in *state* is the loader's trial, the loader has no
    tries left for it, and it is not what runs now: its kernel or its init
    failed before the initramfs could count the try (a kernel that panics
    early, a root that never comes up).
    """
    loader = boot_loader(kind, boot_dir)
    if loader is None or state.trial is None:
        return False
    known = loader.trial_counter()
    return (known is not None and known.commit == state.trial.commit and known.tries == 0
            and booted != state.trial.commit)


def loader_status(kind: str, boot_dir: str) -> Optional[LoaderStatus]:
    loader = boot_loader(kind, boot_dir)
    return None if loader is None else loader.status()


def _remove_others(boot_dir: str, keep: set) -> None:
    base = os.path.join(boot_dir, RELEASES_DIR)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return
    for name in names:
        if len(name) in (40, 64) and name not in keep:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            log.info("removed the boot files of %s", name[:12])


def abandon_if_loader_gave_up(store, state: State, kind: str, boot_dir: str,
                              booted: Optional[str], by: str) -> State:
    """Record in the state that the loader abandoned the trial (see
    :func:`loader_gave_up`); returns the state, changed or not.  The caller
    holds the state lock."""
    if not loader_gave_up(kind, boot_dir, state, booted):
        return state
    from dataclasses import replace
    trial = state.trial
    new = replace(state, trial=None, abandoned=trial)
    store.save(new, "abandon", by, trial.commit,
               f"the boot loader used up the {trial.tries} tries of trial {trial.commit[:12]} "
               "and fell back (its kernel or root never reached mark-good)")
    log.warning("trial %s abandoned: the boot loader used up its tries", trial.commit[:12])
    return new


def sync_device(device, state: State) -> Optional[LoaderStatus]:
    """:func:`sync_boot_loader` with a device's configuration and repository."""
    from gitroot.boot.state import booted_commit
    cfg = device.config
    if cfg.bootloader.type == "none":
        return None
    return sync_boot_loader(device.repo, state, booted_commit(), cfg.bootloader.type,
                            cfg.boot_dir, cfg.bootloader.cmdline)
