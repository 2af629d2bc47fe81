"""What a device keeps across boots and upgrades: the persistence directory.

The initramfs calls :func:`prepare_boot` once the chosen release is mounted
at ``/run/gitroot/lower`` and the root overlay at ``${rootmnt}``; it returns
the mounts to make before switch_root, which the boot script makes
(docs/boot.md, "Persistent data").  Layout, next to the repository on the
medium (``PERSIST_DIR``, normally ``/gitroot/persist``)::

    machine-id            the device's identity, kept even by a kiosk
    etc/current           the release whose /etc was mounted last
    etc/COMMIT/release/   that release's /etc as published (the next merge's base)
    etc/COMMIT/device/    the device's /etc under that release (bind-mounted at /etc)
    etc/COMMIT/merge.json how it was made: from which release, the conflicts
    data/PATH/upper,work  an overlay's upper and work directories per persistent path
    migrations/           applied migrations (gitroot.device.migrate)
    factory-reset         present: the next boot drops etc/, data/, migrations/

The release says what persists in ``/usr/lib/gitroot/persistence``
(:data:`DECLARATION`), one absolute path a line, ``#`` comments, or the word
``ephemeral`` for a kiosk (nothing persists but the machine-id).  Without the
file, :data:`DEFAULT_PATHS`; a malformed file is reported and the default is
used, never half of it.  ``gitroot.persist=off`` on the kernel command line
makes any release ephemeral.

Crash safety: a release's /etc is built in ``etc/.building-COMMIT`` and
renamed to ``etc/COMMIT`` once complete (after a ``sync``), so a power cut
leaves either no ``etc/COMMIT`` (the next boot removes the leftover and
merges again) or a complete one; ``etc/current`` and ``machine-id`` are
replaced with write-beside-and-rename.  Everything written lies below the
persistence directory or is one of the mount targets below the new root,
created without following symlinks.

Standard library only (the initramfs imports it); no threads.
"""

import contextlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from gitroot.boot import etcmerge
from gitroot.atomic import fsync_dir, write_file as atomic_write
from gitroot.errors import GitrootError, PersistError

PERSIST_DIR = "persist"
DECLARATION = "usr/lib/gitroot/persistence"
DEFAULT_PATHS = ("/var", "/home", "/root", "/srv")
MAX_DECLARATION_BYTES = 16 * 1024
MAX_PATHS = 32
FACTORY_RESET = "factory-reset"
# Data migrations (gitroot.device.migrate runs them after switch_root; the
# boot path only tells whether there can be any to run).
MIGRATIONS_IN_RELEASE = "usr/lib/gitroot/migrations"
MIGRATION_ID = re.compile(r"(\d{14})-([a-z0-9][a-z0-9._-]{0,63})")
# Written to the run directory when there is certainly nothing to migrate:
# gitroot-migrate.service is skipped (ConditionPathExists=!), which saves
# the booted system's first Python start (27 s of a 123 s TCG boot).
NOTHING_TO_MIGRATE = "migrations-none-due"
# Never persistent: the release itself, the kernel's and the boot's own
# filesystems.  /etc is persistent in its own way (merged per release).
RESERVED = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
            "/boot", "/proc", "/sys", "/dev", "/run", "/tmp")
# Paths end up in mount options (commas, colons) and in the boot script's
# `read`: a conservative alphabet keeps both unambiguous.
_SAFE_PATH = re.compile(r"(/[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*)+")
_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")


class DeclarationError(PersistError):
    """The release's persistence file is malformed."""


@dataclass(frozen=True)
class Declaration:
    paths: Tuple[str, ...] = DEFAULT_PATHS
    ephemeral: bool = False
    source: str = "default"        # "release", "default", "kernel command line"


@dataclass(frozen=True)
class Mount:
    """One mount the boot script makes below the new root."""

    kind: str                      # "bind" or "overlay"
    target: str                    # absolute path below the new root
    source: str                    # bind: the directory; overlay: the lower directory
    upper: str = ""
    work: str = ""
    path: str = ""                 # the mount point in the booted system ("" for /etc)

    @property
    def unit(self) -> str:
        """The systemd mount unit the boot script writes for it ("-": none)."""
        return mount_unit(self.path) if self.path else "-"

    def line(self) -> str:
        """``KIND UNIT SOURCE TARGET [UPPER WORK]``, as the boot script reads it."""
        return " ".join(p for p in (self.kind, self.unit, self.source, self.target, self.upper,
                                    self.work) if p)


def mount_unit(path: str) -> str:
    """systemd's name for the mount unit of *path* (``systemd-escape --path
    --suffix=mount``): ``/var/lib/app-data`` -> ``var-lib-app\\x2ddata.mount``."""
    name = path.strip("/")
    if not name:
        return "-.mount"
    out = []
    for i, ch in enumerate(name):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.append("\\x%02x" % ord(ch))
    return "".join(out) + ".mount"


@dataclass
class BootPlan:
    mounts: List[Mount] = field(default_factory=list)
    messages: List[str] = field(default_factory=list)     # worth a line on the console
    etc: Optional[dict] = None                             # merge.json of the booted /etc
    nothing_to_migrate: bool = False                       # see nothing_to_migrate()


# -- the declaration ------------------------------------------------------------------

def parse_declaration(text: str) -> Declaration:
    """The persistence file's text -> a Declaration (pure); DeclarationError if malformed."""
    paths: List[str] = []
    ephemeral = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line == "ephemeral":
            ephemeral = True
            continue
        problem = path_problem(line)
        if problem:
            raise DeclarationError(f"line {number}: {line[:80]!r}: {problem}")
        for other in paths:
            if line == other or line.startswith(other + "/") or other.startswith(line + "/"):
                raise DeclarationError(f"line {number}: {line} overlaps {other}")
        paths.append(line)
        if len(paths) > MAX_PATHS:
            raise DeclarationError(f"more than {MAX_PATHS} paths")
    return Declaration(() if ephemeral else tuple(paths), ephemeral, "release")


def path_problem(path: str) -> Optional[str]:
    """Why *path* cannot be persistent, or None."""
    if not path.startswith("/"):
        return "not an absolute path"
    if not _SAFE_PATH.fullmatch(path) or any(p in (".", "..") for p in path.split("/")):
        return "not a plain path (letters, digits, . _ @ + - between single slashes)"
    if path.count("/") > 8:
        return "more than 8 levels deep"
    for reserved in RESERVED:
        if path == reserved or path.startswith(reserved + "/"):
            return f"{reserved} cannot be persistent"
    return None


def read_declaration(release_root: str, kernel_options=None) -> Tuple[Declaration, List[str]]:
    """The declaration of the release mounted at *release_root*, and messages."""
    if (kernel_options or {}).get("persist") == "off":
        return Declaration((), True, "kernel command line"), []
    path = os.path.join(release_root, DECLARATION)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return Declaration(), []
    except OSError as err:
        return Declaration(), [f"/{DECLARATION}: {err.strerror}; using the default"]
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return Declaration(), [f"/{DECLARATION}: not a regular file; using the default"]
        data = f.read(MAX_DECLARATION_BYTES + 1)
    try:
        if len(data) > MAX_DECLARATION_BYTES:
            raise DeclarationError(f"larger than {MAX_DECLARATION_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DeclarationError("not UTF-8 text") from None
        return parse_declaration(text), []
    except DeclarationError as err:
        return Declaration(), [f"/{DECLARATION}: {err}; using the default "
                               f"({' '.join(DEFAULT_PATHS)})"]


# -- the persistence directory ------------------------------------------------------------

def persist_dir_for(state_dir: str) -> str:
    """The persistence directory of a device: beside its state directory."""
    return os.path.join(os.path.dirname(os.path.abspath(state_dir)), PERSIST_DIR)


class Layout:
    """Paths inside one persistence directory (see the module docstring)."""

    def __init__(self, root: str):
        self.root = root
        self.etc = os.path.join(root, "etc")
        self.data = os.path.join(root, "data")
        self.migrations = os.path.join(root, "migrations")
        self.machine_id = os.path.join(root, "machine-id")
        self.factory_reset = os.path.join(root, FACTORY_RESET)
        self.current = os.path.join(self.etc, "current")

    def etc_of(self, commit: str) -> str:
        if not _COMMIT.fullmatch(commit):
            raise PersistError(f"not a commit id: {commit[:80]!r}")
        return os.path.join(self.etc, commit)

    def data_of(self, path: str) -> str:
        return os.path.join(self.data, path[1:].replace("/", "%"))

    def current_etc(self) -> Optional[str]:
        """The release whose /etc was mounted last (None if unknown or garbled)."""
        try:
            with open(self.current) as f:
                commit = f.read(200).strip()
        except OSError:
            return None
        return commit if _COMMIT.fullmatch(commit) else None

    def merge_record(self, commit: str) -> Optional[dict]:
        try:
            with open(os.path.join(self.etc_of(commit), "merge.json")) as f:
                record = json.load(f)
            return record if isinstance(record, dict) else None
        except (OSError, ValueError, PersistError):
            return None


#: writes the release's published /etc into a directory it creates
#: (gitroot boot-persist reads it from the repository: gitroot.serve.export)
PublishEtc = Callable[[str], None]


def prepare_etc(layout: Layout, commit: str, release_etc: str,
                publish_etc: Optional[PublishEtc] = None) -> dict:
    """The device's /etc for *commit* (built once per release), as merge.json says.

    The first boot of a release merges (base: the previously mounted
    release's published /etc, local: the device's /etc under it, new:
    *release_etc*); later boots, and a rollback to a release that already
    has one, reuse it.  *publish_etc* writes the release's /etc to the
    path it is given, in place of a copy of *release_etc* (the mount):
    the same entries, read without a trip through FUSE for each.
    """
    target = layout.etc_of(commit)
    os.makedirs(layout.etc, mode=0o700, exist_ok=True)
    for name in os.listdir(layout.etc):
        if name.startswith((".building-", ".pruned-")):   # work a power cut interrupted
            shutil.rmtree(os.path.join(layout.etc, name), ignore_errors=True)
    if not os.path.isdir(target):
        building = os.path.join(layout.etc, f".building-{commit}")
        os.mkdir(building, 0o700)
        try:
            _build_etc(layout, commit, release_etc, building, publish_etc)
        except BaseException:
            # a full medium, an unreadable tree: the previous state stays as it was
            shutil.rmtree(building, ignore_errors=True)
            raise
        os.rename(building, target)
        fsync_dir(layout.etc)
    if layout.current_etc() != commit:
        atomic_write(layout.current, (commit + "\n").encode(), 0o644)
    record = layout.merge_record(commit)
    if record is None:
        raise PersistError(f"{target}/merge.json is unreadable")
    return record


def _build_etc(layout: Layout, commit: str, release_etc: str, building: str,
               publish_etc: Optional[PublishEtc]) -> None:
    """Copy the published /etc, then merge or copy the device's; merge.json last."""
    if publish_etc is None:
        etcmerge.copy_tree(release_etc, os.path.join(building, "release"))
    else:
        publish_etc(os.path.join(building, "release"))
    previous = layout.current_etc()
    record = {"commit": commit, "from": None, "time": time.time(), "conflicts": [],
              "merged_text": []}
    if previous and previous != commit and os.path.isdir(layout.etc_of(previous)):
        prev = layout.etc_of(previous)
        result = etcmerge.merge_trees(os.path.join(prev, "release"),
                                      os.path.join(prev, "device"),
                                      os.path.join(building, "release"),
                                      os.path.join(building, "device"))
        record.update({"from": previous,
                       "conflicts": [c.to_json() for c in result.conflicts],
                       "merged_text": result.merged_text})
    else:
        etcmerge.copy_tree(os.path.join(building, "release"),
                           os.path.join(building, "device"))
    _write_json(os.path.join(building, "merge.json"), record)
    # every file of the new tree on disk before the name that publishes it
    os.sync()


def _write_json(path: str, data: dict) -> None:
    atomic_write(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def prune_etc(layout: Layout, keep) -> List[str]:
    """Drop the kept /etc of every release not in *keep* (what ``gitroot gc``
    keeps) except the one mounted last; returns the commits dropped."""
    current = layout.current_etc()
    dropped = []
    try:
        names = sorted(os.listdir(layout.etc))
    except FileNotFoundError:
        return []
    for name in names:
        if _COMMIT.fullmatch(name) and name not in keep and name != current:
            # renamed first, so a power cut never leaves a half-deleted /etc
            # under a name a boot would mount
            trash = os.path.join(layout.etc, f".pruned-{name}")
            os.rename(os.path.join(layout.etc, name), trash)
            shutil.rmtree(trash, ignore_errors=True)
            dropped.append(name)
    return dropped


# -- machine-id -------------------------------------------------------------------------

def device_machine_id(layout: Layout, fallback_etc: Optional[str] = None) -> str:
    """The device's machine-id: kept in the persistence directory, made once.

    A device that ran before this existed keeps the id its /etc holds.
    """
    stored = _read_machine_id(layout.machine_id)
    if stored:
        return stored
    found = _read_machine_id(os.path.join(fallback_etc, "machine-id")) if fallback_etc else None
    machine_id = found or os.urandom(16).hex()
    os.makedirs(layout.root, mode=0o755, exist_ok=True)
    atomic_write(layout.machine_id, (machine_id + "\n").encode(), 0o444)
    return machine_id


def _read_machine_id(path: str) -> Optional[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        text = f.read(64).decode("ascii", "replace").strip()
    return text if _MACHINE_ID.fullmatch(text) else None


def write_machine_id(etc_dir: str, machine_id: str) -> None:
    """Put *machine_id* at ETC_DIR/machine-id, replacing whatever is there
    (a symlink included) without following any symlink."""
    dir_fd = os.open(etc_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        tmp = f".machine-id.gitroot-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444,
                     dir_fd=dir_fd)
        try:
            os.write(fd, (machine_id + "\n").encode())
            os.fchmod(fd, 0o444)
            os.fchown(fd, 0, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, "machine-id", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


# -- factory reset -------------------------------------------------------------------------

def request_factory_reset(layout: Layout) -> None:
    os.makedirs(layout.root, mode=0o755, exist_ok=True)
    atomic_write(layout.factory_reset, f"requested {time.time()}\n".encode())


def apply_factory_reset(layout: Layout) -> bool:
    """Drop etc/, data/, migrations/ if a reset was requested (kept: machine-id)."""
    if not os.path.exists(layout.factory_reset):
        return False
    trash = os.path.join(layout.root, ".factory-reset-trash")
    os.makedirs(trash, exist_ok=True)
    for path in (layout.etc, layout.data, layout.migrations):
        if os.path.lexists(path):
            # renames first: a power cut leaves the reset half-renamed, and the
            # marker (removed only after) makes the next boot finish it
            os.rename(path, os.path.join(trash, f"{os.path.basename(path)}-{time.time_ns()}"))
    fsync_dir(layout.root)
    os.unlink(layout.factory_reset)
    shutil.rmtree(trash, ignore_errors=True)
    return True


# -- the boot -----------------------------------------------------------------------------

def nothing_to_migrate(layout: Layout, lower: str) -> bool:
    """True only when ``gitroot migrate`` would certainly find nothing to do
    for the release mounted at *lower*: the migrations it carries are
    exactly those applied on the device, all well named, and no run was
    cut short.  Anything unreadable or odd answers False, so that the
    migration service runs and says what is wrong."""
    applied_dir = os.path.join(layout.migrations, "applied")
    carried_dir = os.path.join(lower, MIGRATIONS_IN_RELEASE)
    listed = []
    for directory in (carried_dir, layout.migrations, applied_dir):
        try:
            listed.append(os.listdir(directory))
        except FileNotFoundError:
            listed.append([])
        except OSError:
            return False
    carried, records, applied = listed
    if any(n.startswith((".applying-", ".reverting-")) for n in records):
        return False
    for name in carried:
        path = os.path.join(carried_dir, name)
        if not MIGRATION_ID.fullmatch(name) or os.path.islink(path) or not os.path.isdir(path):
            return False
    applied_ids = {n for n in applied if MIGRATION_ID.fullmatch(n)
                   and os.path.isdir(os.path.join(applied_dir, n))}
    return set(carried) == applied_ids


def prepare_boot(layout: Layout, commit: str, lower: str, root: str,
                 kernel_options=None, publish_etc: Optional[PublishEtc] = None) -> BootPlan:
    """Everything before the persistent mounts; returns them (see the module docstring).

    *lower* is the release as mounted (read-only), *root* the new root (the
    writable overlay).  A problem with one path is a message and that path
    stays ephemeral; the boot goes on.  *publish_etc*: see prepare_etc.
    """
    plan = BootPlan()
    if apply_factory_reset(layout):
        plan.messages.append("factory reset: the device's /etc and persistent data were dropped")
    declaration, messages = read_declaration(lower, kernel_options)
    plan.messages.extend(messages)
    unsafe = [p for p in (layout.root, lower) if path_problem_anywhere(p)]
    if unsafe:
        plan.messages.append(f"{unsafe[0]} cannot be used in a mount option; nothing persists")
        declaration = Declaration((), True, "unsafe path")
    etc_dir = None
    if not declaration.ephemeral:
        record = None
        if _real_directory(lower, "etc") and _real_directory(root, "etc"):
            try:
                record = prepare_etc(layout, commit, os.path.join(lower, "etc"), publish_etc)
            except (GitrootError, OSError) as err:
                detail = err.strerror if isinstance(err, OSError) else str(err)
                plan.messages.append(f"/etc cannot be prepared ({detail}); "
                                     "this boot's /etc is the release's and is not kept")
        else:
            plan.messages.append("the release's /etc is not a directory; /etc is ephemeral")
        if record is not None:
            plan.etc = record
            etc_dir = os.path.join(layout.etc_of(commit), "device")
            plan.mounts.append(Mount("bind", os.path.join(root, "etc"), etc_dir))
            if record["conflicts"]:
                plan.messages.append(
                    f"/etc: {len(record['conflicts'])} conflict(s) merging the device's changes "
                    f"into release {commit[:12]}: " + ", ".join(
                        c["path"] for c in record["conflicts"][:5])
                    + "; see gitroot status")
    machine_id = device_machine_id(layout, etc_dir)
    if etc_dir:
        write_machine_id(etc_dir, machine_id)
    elif _real_directory(root, "etc"):
        write_machine_id(os.path.join(root, "etc"), machine_id)
    for path in declaration.paths:
        problem = _mount_point(root, path)
        if problem:
            plan.messages.append(f"{path}: {problem}; it stays ephemeral")
            continue
        data = layout.data_of(path)
        upper, work = os.path.join(data, "upper"), os.path.join(data, "work")
        for d in (upper, work):
            os.makedirs(d, mode=0o755, exist_ok=True)
        if _real_directory(lower, path.lstrip("/")):
            plan.mounts.append(Mount("overlay", root + path, lower + path, upper, work,
                                     path=path))
        else:
            # not in the release: nothing to lay the device's data over
            plan.mounts.append(Mount("bind", root + path, upper, path=path))
    plan.nothing_to_migrate = nothing_to_migrate(layout, lower)
    return plan


def path_problem_anywhere(path: str) -> bool:
    return not _SAFE_PATH.fullmatch(path)


def _real_directory(root: str, rel: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(root, rel)).st_mode)
    except OSError:
        return False


def _mount_point(root: str, path: str) -> Optional[str]:
    """Make ROOT/PATH a directory without following a symlink; why not, or None.

    A release's symlink there (``/home -> /var/home``) is refused rather than
    followed: the mount would land wherever it points, in the initramfs.
    """
    current = root
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            try:
                os.mkdir(current, 0o755)
            except OSError as err:
                return f"cannot create it: {err.strerror}"
            continue
        except OSError as err:
            return err.strerror
        if not stat.S_ISDIR(st.st_mode):
            return "a symlink or a file in the release, not a directory"
    return None
