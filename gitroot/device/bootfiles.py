"""A release's kernel and initrd, installed where the next boot finds them.

``BOOT/gitroot/<commit>/{vmlinuz,initrd.img}`` for each kept release and
``BOOT/gitroot/trial`` pointing at the newest pin; written beside and
renamed, so a power cut leaves the old files or the new ones.  An initrd
the release keeps uncompressed is compressed on the way
(:mod:`gitroot.device.initrd`); neither file is read past its bound
(:data:`MAX_KERNEL`, :data:`gitroot.device.initrd.MAX_INITRD`).
"""

import logging
import os
import re
import shutil
from typing import List

import pygit2

from gitroot import atomic
from gitroot.device.initrd import MAX_INITRD, InitrdError, boot_initrd

log = logging.getLogger(__name__)

KERNEL_NAMES = (b"vmlinuz", b"initrd.img")
#: No release's kernel is read beyond this (Debian's is about 8 MB).
MAX_KERNEL = 128 << 20


def _release_boot_files(repo: pygit2.Repository, commit: str) -> dict:
    """{name: bytes} of the release's kernel and initrd (newest in /boot),
    the initrd as the boot loader gets it (:func:`boot_initrd`).  A file
    past its bound is an :class:`InitrdError`."""
    from gitroot.serve.vfs import ST_SIZE, EntryError, RootView
    view = RootView(repo, commit)
    found = {}
    try:
        names = view.listdir(b"boot")
    except (FileNotFoundError, NotADirectoryError, EntryError):
        return found
    for kind in KERNEL_NAMES:
        candidates = sorted((n for n in names if n.startswith(kind + b"-")),
                            key=_version_key)
        limit = MAX_INITRD if kind == b"initrd.img" else MAX_KERNEL
        for name in reversed(candidates):
            path = b"boot/" + name
            try:
                size = view.stat(path)[ST_SIZE]
                if size > limit:
                    raise InitrdError(
                        f"release {commit[:12]}: /boot/{name.decode(errors='replace')} is "
                        f"{size} bytes, more than the {limit >> 20} MiB gitroot installs")
                data = view.read_file(path, limit + 1, 0)
            except (OSError, EntryError) as err:
                log.warning("boot/%s unreadable: %s", name.decode(errors="replace"), err)
                continue
            if kind == b"initrd.img":
                data, done = boot_initrd(data)
                log.info("release %s: /boot/%s %s", commit[:12],
                         name.decode(errors="replace"), done)
            found[kind.decode()] = data
            break
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
