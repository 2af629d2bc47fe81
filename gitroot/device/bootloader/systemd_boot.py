"""systemd-boot back end: Boot Loader Specification type 1 entries on the ESP.

``boot_dir`` is where the ESP (or XBOOTLDR partition) is mounted.  Each kept
release gets ``loader/entries/gitroot-<commit>.conf``; the trial's entry
carries systemd's Automatic Boot Assessment counter in its file name,
``gitroot-<commit>+N.conf``: systemd-boot renames it to ``+LEFT-DONE`` at
every try and, once no tries are left, sorts it after every other entry,
so the loader itself falls back to the last good release.  Blessing is
gitroot's mark-good (after ``boot-complete.target``): the trial's entry is
then written again without a counter.

Entries are ordered by ``sort-key`` (trial, last good, booted, previous
good), and systemd-boot boots the first one that is not out of tries when
``loader.conf`` names no default.
"""

import os
import re
from typing import Dict, List, Optional

from gitroot.device.bootloader import (BootLoader, BootLoaderError, Entry, LoaderStatus,
                                       TrialCounter, write_file)

ENTRIES_DIR = os.path.join("loader", "entries")
SORT_KEYS = {"trial": "gitroot-0-trial", "last-good": "gitroot-1-last-good",
             "booted": "gitroot-2-booted", "previous-good": "gitroot-3-previous-good"}
_NAME = re.compile(r"^gitroot-([0-9a-f]{40}|[0-9a-f]{64})(?:\+(\d+)(?:-(\d+))?)?\.conf$")


class SystemdBoot(BootLoader):
    name = "systemd-boot"

    @property
    def entries_dir(self) -> str:
        return os.path.join(self.boot_dir, ENTRIES_DIR)

    def _files(self) -> Dict[str, tuple]:
        """file name -> (commit, tries left or None, role)."""
        out = {}
        try:
            names = os.listdir(self.entries_dir)
        except FileNotFoundError:
            return out
        for name in names:
            match = _NAME.match(name)
            if not match:
                continue
            left = int(match.group(2)) if match.group(2) is not None else None
            out[name] = (match.group(1), left, self._role(name))
        return out

    def _role(self, name: str) -> Optional[str]:
        try:
            with open(os.path.join(self.entries_dir, name), errors="replace") as f:
                for line in f:
                    key, _, value = line.strip().partition(" ")
                    if key == "sort-key":
                        return {v: k for k, v in SORT_KEYS.items()}.get(value.strip())
        except OSError:
            pass
        return None

    def trial_counter(self) -> Optional[TrialCounter]:
        for commit, left, role in self._files().values():
            if role == "trial" and left is not None:
                return TrialCounter(commit, left)
        return None

    def write(self, entries: List[Entry], trial: Optional[TrialCounter]) -> None:
        existing = self._files()
        wanted = {}
        for entry in entries:
            name = f"gitroot-{entry.commit}.conf"
            if entry.role == "trial" and trial is not None:
                # keep the loader's own counter if it has started counting
                name = next((n for n, (c, left, role) in existing.items()
                             if c == entry.commit and role == "trial" and left is not None
                             and left <= trial.tries),
                            f"gitroot-{entry.commit}+{trial.tries}.conf")
            wanted[name] = entry
        for name, entry in wanted.items():
            lines = [f"title gitroot {entry.role} {entry.commit[:12]}",
                     f"sort-key {SORT_KEYS[entry.role]}",
                     f"version {entry.commit[:12]}",
                     f"linux /{entry.kernel}"]
            if entry.initrd:
                lines.append(f"initrd /{entry.initrd}")
            lines.append(f"options {entry.cmdline}")
            write_file(os.path.join(self.entries_dir, name), ("\n".join(lines) + "\n").encode())
        for name in existing:
            if name not in wanted:
                try:
                    os.unlink(os.path.join(self.entries_dir, name))
                except OSError as err:
                    raise BootLoaderError(f"cannot remove {name}: {err.strerror}") from None

    def status(self) -> LoaderStatus:
        files = self._files()
        entries = {role: commit for commit, _left, role in files.values() if role}
        counter = self.trial_counter()
        default_role = None
        for role in ("trial", "last-good", "booted", "previous-good"):
            if role not in entries:
                continue
            if role == "trial" and counter is not None and counter.tries == 0:
                continue
            default_role = role
            break
        return LoaderStatus("systemd-boot", entries.get(default_role) if default_role else None,
                            default_role, counter, entries)
