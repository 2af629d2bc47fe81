"""A release's kernel and initrd, installed where the next boot finds them.

``BOOT/gitroot/<commit>/{vmlinuz,initrd.img}`` for each kept release and
``BOOT/gitroot/trial`` pointing at the newest pin; written beside and
renamed, so a power cut leaves the old files or the new ones.
"""

import logging
import os
import re
import shutil
from typing import List

import pygit2

from gitroot import atomic

log = logging.getLogger(__name__)

KERNEL_NAMES = (b"vmlinuz", b"initrd.img")


def _release_boot_files(repo: pygit2.Repository, commit: str) -> dict:
    """{name: bytes} of the release's kernel and initrd (newest in /boot)."""
    from gitroot.serve.vfs import EntryError, RootView
    view = RootView(repo, commit)
    found = {}
    try:
        names = view.listdir(b"boot")
    except (FileNotFoundError, NotADirectoryError, EntryError):
        return found
    for kind in KERNEL_NAMES:
        candidates = sorted((n for n in names if n.startswith(kind + b"-")),
                            key=_version_key)
        for name in reversed(candidates):
            try:
                found[kind.decode()] = view.read_file(b"boot/" + name, 1 << 40, 0)
                break
            except (OSError, EntryError) as err:
                log.warning("boot/%s unreadable: %s", name.decode(errors="replace"), err)
    return found


def _version_key(name: bytes):
    return [int(p) if p.isdigit() else p for p in re.split(rb"(\d+)", name)]


def install_boot_files(repo: pygit2.Repository, commit: str, boot_dir: str,
                       keep: List[str]) -> None:
    """Install *commit*'s kernel and initrd as BOOT/gitroot/<commit>/ and point
    BOOT/gitroot/trial at it; remove releases other than *keep* and it."""
    files = _release_boot_files(repo, commit)
    base = os.path.join(boot_dir, "gitroot")
    if not files:
        log.info("release %s has no kernel in /boot; boot files left as they are", commit[:12])
        return
    target = os.path.join(base, commit)
    for name, data in files.items():
        path = os.path.join(target, name)
        if not _same_content(path, data):
            atomic.write_file(path, data)
    atomic.symlink(commit, os.path.join(base, "trial"))
    for entry in os.listdir(base):
        if len(entry) == 40 and entry not in keep and entry != commit:
            shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
    log.info("installed %s into %s", ", ".join(sorted(files)), target)


def _same_content(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False
