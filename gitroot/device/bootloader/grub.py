"""GRUB back end: a generated grub.cfg, the trial and its tries in grubenv.

Files, in ``BOOT_DIR/grub`` (GRUB's ``$prefix``, on the medium)::

    grub.cfg   written by gitroot: one menu entry per kept release
    grubenv    GRUB's environment block: gitroot_trial=<commit>, gitroot_tries=N

At every boot grub.cfg loads ``gitroot_trial`` and ``gitroot_tries``; when
the trial is the one this grub.cfg was written for and tries are left, it
counts one down, saves it with ``save_env`` and boots the trial's entry;
otherwise the last good release's.  GRUB's script language has no
arithmetic, so the count down is a chain of string comparisons (as in
greenboot's and RAUC's GRUB integrations).  Nothing but gitroot writes
these variables, and a grubenv that is damaged or missing makes GRUB boot
the last good release.

Kernel paths are relative to ``$prefix`` (``(hd0,msdos1)/boot/grub`` ->
``(hd0,msdos1)/boot``), so the same files work whether the medium is
mounted at /run/gitroot/medium or is a staging directory on a build host.
"""

import os
import re
from typing import Dict, List, Optional

from gitroot.device.bootloader import (BootLoader, BootLoaderError, Entry, LoaderStatus,
                                       TrialCounter, write_file)
from gitroot.device.bootloader.flush import flush_for_loader

ENV_SIZE = 1024
ENV_HEADER = b"# GRUB Environment Block\n"
VAR_TRIAL = "gitroot_trial"
VAR_TRIES = "gitroot_tries"
ENTRY_IDS = {"trial": "gitroot-trial", "last-good": "gitroot-last-good",
             "booted": "gitroot-booted", "previous-good": "gitroot-previous-good"}
# GRUB's shell would expand or split these inside a menu entry
_UNSAFE = re.compile(r"[$'\"\\;{}|&<>`\n]")


class Grub(BootLoader):
    name = "grub"

    @property
    def grub_dir(self) -> str:
        return os.path.join(self.boot_dir, "grub")

    @property
    def env_path(self) -> str:
        return os.path.join(self.grub_dir, "grubenv")

    # -- grubenv ---------------------------------------------------------

    def read_env(self) -> Dict[str, str]:
        try:
            with open(self.env_path, "rb") as f:
                return parse_env(f.read(ENV_SIZE * 2))
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise BootLoaderError(f"cannot read {self.env_path}: {err.strerror}") from None

    def write_env(self, env: Dict[str, str]) -> None:
        write_file(self.env_path, format_env(env))

    def trial_counter(self) -> Optional[TrialCounter]:
        env = self.read_env()
        commit, tries = env.get(VAR_TRIAL), env.get(VAR_TRIES, "")
        if not commit:
            return None
        return TrialCounter(commit, int(tries) if tries.isdigit() else 0)

    # -- grub.cfg --------------------------------------------------------

    def write(self, entries: List[Entry], trial: Optional[TrialCounter]) -> None:
        for entry in entries:
            if _UNSAFE.search(entry.cmdline):
                raise BootLoaderError(
                    f"bootloader.cmdline {entry.cmdline!r} holds a character GRUB's "
                    "script would interpret ($ ' \" \\ ; { } | & < > `)")
        # grub.cfg first: it names the trial it counts, so a grubenv left
        # from before (power cut) never makes it boot another commit
        write_file(os.path.join(self.grub_dir, "grub.cfg"),
                     grub_cfg(entries, trial).encode())
        # GRUB reads the medium without its journal: the new grub.cfg must be
        # home before grubenv names a new trial (see flush.py)
        flush_for_loader(self.grub_dir)
        env = self.read_env()
        env.pop(VAR_TRIAL, None)
        env.pop(VAR_TRIES, None)
        if trial is not None:
            env[VAR_TRIAL] = trial.commit
            env[VAR_TRIES] = str(trial.tries)
        self.write_env(env)

    def status(self) -> LoaderStatus:
        entries = _entries_in_cfg(os.path.join(self.grub_dir, "grub.cfg"))
        counter = self.trial_counter()
        default_role = "last-good" if "last-good" in entries else \
            ("booted" if "booted" in entries else None)
        if counter is not None and counter.tries > 0 and entries.get("trial") == counter.commit:
            default_role = "trial"
        return LoaderStatus("grub", entries.get(default_role) if default_role else None,
                            default_role, counter, entries)


def parse_env(data: bytes) -> Dict[str, str]:
    """GRUB's environment block: NAME=VALUE lines after the header, '#' padding."""
    env = {}
    if not data.startswith(ENV_HEADER):
        return env
    for line in data[len(ENV_HEADER):].split(b"\n"):
        if not line or line.startswith(b"#") or b"=" not in line:
            continue
        name, _, value = line.partition(b"=")
        env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def format_env(env: Dict[str, str]) -> bytes:
    body = ENV_HEADER + b"".join(f"{k}={v}\n".encode() for k, v in sorted(env.items()))
    if len(body) > ENV_SIZE:
        raise BootLoaderError(f"the GRUB environment block would exceed {ENV_SIZE} bytes")
    return body + b"#" * (ENV_SIZE - len(body))


def grub_cfg(entries: List[Entry], trial: Optional[TrialCounter]) -> str:
    fallback = next((e for e in entries if e.role == "last-good"), None) or \
        next((e for e in entries if e.role == "booted"), entries[0])
    lines = [
        "# Written by gitroot (gitroot boot-entries); every pin, mark-good, rollback",
        "# and gc rewrites it.  Set the kernel command line as bootloader.cmdline in",
        "# /etc/gitroot/gitroot.yml, not here.",
        "set timeout=0",
    ]
    if any("console=ttyS" in e.cmdline for e in entries):
        lines += ["serial --unit=0 --speed=115200",
                  "terminal_input console serial",
                  "terminal_output console serial"]
    lines += [
        # $prefix is (DEVICE)/PATH/grub: the releases are next to grub/
        "regexp --set 1:gitroot_boot '^(.*)/[^/]*$' \"$prefix\"",
        "export gitroot_boot",
        f"set default={ENTRY_IDS[fallback.role]}",
    ]
    trial_entry = next((e for e in entries if e.role == "trial"), None)
    if trial is not None and trial_entry is not None:
        lines += [
            f"load_env {VAR_TRIAL} {VAR_TRIES}",
            f'if [ "${VAR_TRIAL}" = "{trial.commit}" ]; then',
        ]
        keyword = "if"
        for left in range(max(trial.tries, 1), 0, -1):
            lines += [f'  {keyword} [ "${VAR_TRIES}" = "{left}" ]; then',
                      f"    set {VAR_TRIES}={left - 1}",
                      f"    set default={ENTRY_IDS['trial']}"]
            keyword = "elif"
        lines += ["  fi",
                  f"  save_env {VAR_TRIES}",
                  "fi"]
    for entry in entries:
        label = f"gitroot {entry.role} {entry.commit[:12]}"
        lines += [f"menuentry '{label}' --id {ENTRY_IDS[entry.role]} {{",
                  f"  linux ${{gitroot_boot}}/{entry.kernel} {entry.cmdline}"]
        if entry.initrd:
            lines.append(f"  initrd ${{gitroot_boot}}/{entry.initrd}")
        lines.append("}")
    return "\n".join(lines) + "\n"


_MENU_LINE = re.compile(r"^menuentry '[^']*' --id (\S+) \{$")
_LINUX_LINE = re.compile(r"gitroot\.commit=([0-9a-f]{40,64})\b")


def _entries_in_cfg(path: str) -> Dict[str, str]:
    """role -> commit of the entries in a grub.cfg gitroot wrote."""
    roles = {v: k for k, v in ENTRY_IDS.items()}
    out: Dict[str, str] = {}
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return out
    role = None
    for line in text.splitlines():
        match = _MENU_LINE.match(line.strip())
        if match:
            role = roles.get(match.group(1))
            continue
        found = _LINUX_LINE.search(line)
        if role and found and line.strip().startswith("linux "):
            out[role] = found.group(1)
            role = None
    return out
