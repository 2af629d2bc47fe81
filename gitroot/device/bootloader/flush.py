"""Make what gitroot wrote for the boot loader readable by the boot loader.

GRUB reads ext4 without replaying its journal.  A rename on ext4 reaches the
journal at the next commit (within seconds, or at once on fsync), but the
changed metadata (directory block, inode table, bitmaps) reaches its home
blocks only when writeback or a checkpoint gets to it, in no set order.
Until then GRUB follows stale metadata: the old directory entry, the old
grub.cfg's inode, and that inode's blocks, which ext4 may have handed to
another file as soon as the rename committed (on a device, to the fetch's
pack).  A power cut in that window left a device at GRUB's prompt, on the
VGA console, with no one there to type (boot scenario 6, power cut during a
fetch, before this module).

Freezing a filesystem checkpoints its journal (``jbd2_journal_flush``):
every metadata block is home when FIFREEZE returns, so GRUB sees exactly
what Linux sees.  :func:`flush_for_loader` freezes and at once thaws the
filesystem that holds the loader's files, after each step GRUB must never
see half of.  It never freezes the running system's root filesystem (every
process would stall for the flush; on a gitroot device the root is the
overlay, and the medium is a filesystem of its own), nor anything but
ext3/ext4; there, and where freezing is refused, it syncs, which is all a
journal-less filesystem such as the ESP's FAT needs.

Signals that end the process are blocked between freeze and thaw: a
filesystem left frozen would stall every writer until an administrator
thawed it.  Only SIGKILL can land there, between two system calls.
"""

import fcntl
import logging
import os
import signal

log = logging.getLogger(__name__)

FIFREEZE = 0xC0045877    # _IOWR('X', 119, int)
FITHAW = 0xC0045878      # _IOWR('X', 120, int)
JOURNALED = {"ext3", "ext4"}
_ENDING_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding *path*, from /proc/self/mountinfo
    ('' when no mount there has its device number)."""
    dev = os.stat(path).st_dev
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 8 and fields[2] == wanted and "-" in fields:
                    return fields[fields.index("-") + 1]
    except OSError:
        pass
    return ""


def flush_for_loader(directory: str) -> str:
    """Make everything written under *directory* visible to a boot loader
    that reads the filesystem without its journal.  Returns how: "froze",
    or "synced" (not ext3/ext4, the root filesystem, or freezing refused)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        same_as_root = os.fstat(fd).st_dev == os.stat("/").st_dev
        if same_as_root or filesystem_type(directory) not in JOURNALED:
            os.sync()
            return "synced"
        return "froze" if _freeze_and_thaw(fd, directory) else "synced"
    finally:
        os.close(fd)


def _freeze_and_thaw(fd: int, directory: str) -> bool:
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ENDING_SIGNALS)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as err:
            # EBUSY: frozen by someone else, who will thaw it; EPERM: no
            # CAP_SYS_ADMIN.  The journal is then home only at writeback.
            log.warning("cannot freeze the filesystem of %s to flush its journal for "
                        "the boot loader (%s): synced only", directory, err.strerror)
            os.sync()
            return False
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as err:
            log.warning("thawing the filesystem of %s: %s", directory, err.strerror)
        return True
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
