"""Data migrations: a release's scripts that move persistent data up and down.

A release carries migrations as directories
``/usr/lib/gitroot/migrations/YYYYMMDDHHMMSS-NAME/`` holding ``spec.yml``
(``name``, ``description``, ``snapshot``: the persistent paths to copy
first, optional ``timeout`` in seconds) and the executables ``up`` and
``down``.  After switch_root (``gitroot-migrate.service``, before the
system's services start; ``gitroot migrate``):

1. every applied migration the booted release does not carry is reverted,
   newest first, with the ``down`` script stored when it was applied (an
   older release cannot know how to undo a newer one's change);
2. every migration the release carries and the device has not applied runs
   ``up``, oldest first.

Each run snapshots the spec's paths first (``cp -a --reflink=auto``: a
reflink where the medium's filesystem has them, a copy otherwise); a
script that fails (or outlives its timeout) has the snapshot put back, the
run stops there, and the result is recorded in ``last-run.json`` so that
``gitroot mark-good`` refuses the release and ``gitroot status`` shows why.
Nothing runs for a release whose signature a strict check does not accept.

On the medium (``PERSIST/migrations``)::

    applied/ID/            the migration as applied (spec.yml, up, down, ...)
                           and applied.json; its presence is the record
    .applying-ID/          a copy being applied: a power cut during ``up``
                           leaves it, and the next run restores the snapshot
                           and starts that migration again
    .reverting-ID          a marker: the same for ``down``
    snapshots/ID/          the snapshot while a script runs (``complete`` once copied)
    last-run.json          the last run: release, result, what ran, the output's tail

The scripts run as root with the environment of :func:`script_environment`
(docs/operations.md lists it).  One run at a time (``migrations/lock``).
"""

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from gitroot.boot.persist import MIGRATION_ID, MIGRATIONS_IN_RELEASE, Layout, path_problem
from gitroot.atomic import write_file as atomic_write
from gitroot.errors import GitrootError, MigrationError

MAX_SPEC_BYTES = 64 * 1024
MAX_SNAPSHOT_PATHS = 16
DEFAULT_TIMEOUT = 600
MAX_TIMEOUT = 6 * 3600
OUTPUT_TAIL = 4000
SCRIPT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Spec:
    name: str
    description: str = ""
    snapshot: Tuple[str, ...] = ()
    timeout: int = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Migration:
    id: str                  # YYYYMMDDHHMMSS-NAME
    directory: str           # where its files are (the release's, or the stored copy)
    spec: Optional[Spec]     # None when spec.yml is malformed
    problem: Optional[str] = None


@dataclass
class Plan:
    down: List[Migration] = field(default_factory=list)     # newest first
    up: List[Migration] = field(default_factory=list)       # oldest first
    applied: List[Migration] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)       # malformed ones in the release

    @property
    def pending(self) -> bool:
        return bool(self.down or self.up)


@dataclass
class RunResult:
    release: str
    result: str                              # "ok", "failed", "refused", "nothing"
    message: str = ""
    ran: List[str] = field(default_factory=list)   # "up ID" / "down ID", in order
    failed: Optional[str] = None
    output: str = ""
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        return dict(vars(self))


# -- specs ------------------------------------------------------------------------

def parse_spec(text: str, where: str) -> Spec:
    """spec.yml -> Spec (safe_load, every field checked); MigrationError if malformed."""
    import yaml
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise MigrationError(f"{where}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise MigrationError(f"{where}: expected a mapping")
    unknown = sorted(str(k) for k in data if k not in ("name", "description", "snapshot",
                                                        "timeout"))
    if unknown:
        raise MigrationError(f"{where}: unknown key {unknown[0][:40]!r}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise MigrationError(f"{where}: name must be a non-empty string (at most 200 characters)")
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > 4000:
        raise MigrationError(f"{where}: description must be a string")
    snapshot = data.get("snapshot", []) or []
    if not isinstance(snapshot, list) or len(snapshot) > MAX_SNAPSHOT_PATHS:
        raise MigrationError(f"{where}: snapshot must be a list of at most "
                             f"{MAX_SNAPSHOT_PATHS} paths")
    for path in snapshot:
        problem = path_problem(path) if isinstance(path, str) else "not a string"
        if problem:
            raise MigrationError(f"{where}: snapshot path {str(path)[:80]!r}: {problem}")
    timeout = data.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or \
            not 1 <= timeout <= MAX_TIMEOUT:
        raise MigrationError(f"{where}: timeout must be a number of seconds, "
                             f"1 to {MAX_TIMEOUT}")
    return Spec(name.strip(), description.strip(), tuple(snapshot), timeout)


def load_migration(directory: str, migration_id: str) -> Migration:
    where = os.path.join(directory, "spec.yml")
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise MigrationError(f"{where}: not a regular file")
            data = f.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise MigrationError(f"{where}: larger than {MAX_SPEC_BYTES} bytes")
        spec = parse_spec(data.decode("utf-8", "replace"), where)
    except OSError as err:
        return Migration(migration_id, directory, None, f"{where}: {err.strerror}")
    except MigrationError as err:
        return Migration(migration_id, directory, None, str(err))
    for script in ("up", "down"):
        path = os.path.join(directory, script)
        try:
            st = os.lstat(path)
        except OSError:
            return Migration(migration_id, directory, spec, f"{path}: missing")
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o100:
            return Migration(migration_id, directory, spec,
                             f"{path}: not an executable regular file")
    return Migration(migration_id, directory, spec)


# -- what is there, what is due ------------------------------------------------------

class Store:
    """The migrations part of one device's persistence directory."""

    def __init__(self, layout: Layout):
        self.dir = layout.migrations
        self.applied_dir = os.path.join(self.dir, "applied")
        self.snapshots = os.path.join(self.dir, "snapshots")
        self.last_run_path = os.path.join(self.dir, "last-run.json")

    @contextlib.contextmanager
    def locked(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def applied(self) -> List[Migration]:
        return [load_migration(os.path.join(self.applied_dir, i), i)
                for i in _ids(self.applied_dir)]

    def last_run(self) -> Optional[dict]:
        try:
            with open(self.last_run_path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def record(self, result: RunResult) -> None:
        atomic_write(self.last_run_path,
                     (json.dumps(result.to_json(), indent=1, sort_keys=True) + "\n").encode())


def _ids(directory: str) -> List[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if MIGRATION_ID.fullmatch(n)
                  and os.path.isdir(os.path.join(directory, n)))


def release_migrations(root: str) -> Tuple[List[Migration], List[str]]:
    """The migrations the release mounted at *root* carries, and names it cannot use."""
    directory = os.path.join(root, MIGRATIONS_IN_RELEASE)
    problems = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    except OSError as err:
        return [], [f"{directory}: {err.strerror}"]
    out = []
    for name in names:
        path = os.path.join(directory, name)
        if not MIGRATION_ID.fullmatch(name) or os.path.islink(path) or not os.path.isdir(path):
            problems.append(f"{path}: not a migration directory (YYYYMMDDHHMMSS-name)")
            continue
        out.append(load_migration(path, name))
    return out, problems


def plan(store: Store, root: str) -> Plan:
    carried, problems = release_migrations(root)
    applied = store.applied()
    carried_ids = {m.id for m in carried}
    applied_ids = {m.id for m in applied}
    return Plan(down=[m for m in reversed(applied) if m.id not in carried_ids],
                up=[m for m in carried if m.id not in applied_ids],
                applied=applied, problems=problems)


# -- running -----------------------------------------------------------------------

def script_environment(migration: Migration, direction: str, release: str, layout: Layout,
                       root: str, snapshot_dir: str) -> Dict[str, str]:
    """What a migration script gets (and nothing of the caller's environment)."""
    return {
        "PATH": SCRIPT_PATH,
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "GITROOT_MIGRATION_ID": migration.id,
        "GITROOT_MIGRATION_NAME": migration.spec.name if migration.spec else "",
        "GITROOT_MIGRATION_DIRECTION": direction,
        "GITROOT_MIGRATION_DIR": migration.directory,
        "GITROOT_RELEASE": release,
        "GITROOT_ROOT": root,
        "GITROOT_PERSIST_DIR": layout.root,
        "GITROOT_SNAPSHOT_DIR": snapshot_dir,
    }


def run_migrations(layout: Layout, root: str, release: str, trusted: Callable[[], None],
                   log: Callable[[str], None] = lambda line: None) -> RunResult:
    """Revert and apply what is due for the release mounted at *root*.

    *trusted* raises (a GitrootError) if the release's signature is not
    accepted; it is called only when something is due.  The result is
    recorded in last-run.json and returned; MigrationError is not raised for
    a failing script (the caller decides the exit status from the result).
    """
    store = Store(layout)
    with store.locked():
        _recover(store, layout, root, log)
        due = plan(store, root)
        result = RunResult(release, "nothing")
        broken = [m for m in due.up if m.problem] + [m for m in due.down if m.problem]
        if due.problems or broken:
            result.result = "failed"
            result.message = "; ".join(due.problems + [m.problem for m in broken])
            store.record(result)
            return result
        if not due.pending:
            store.record(result)
            return result
        try:
            trusted()
        except GitrootError as err:
            result.result = "refused"
            result.message = f"no migration runs from a release without a trusted signature: {err}"
            store.record(result)
            return result
        result.result = "ok"
        for migration, direction in [(m, "down") for m in due.down] + [(m, "up") for m in due.up]:
            log(f"{direction} {migration.id}: {migration.spec.name}")
            ok, output = _run_one(store, layout, root, release, migration, direction)
            result.output = output[-OUTPUT_TAIL:]
            if not ok:
                result.result, result.failed = "failed", migration.id
                result.message = (f"{direction} {migration.id} ({migration.spec.name}) failed; "
                                  "its snapshot was restored")
                break
            result.ran.append(f"{direction} {migration.id}")
        store.record(result)
        return result


def _run_one(store: Store, layout: Layout, root: str, release: str, migration: Migration,
             direction: str) -> Tuple[bool, str]:
    snapshot_dir = os.path.join(store.snapshots, migration.id)
    in_progress = os.path.join(store.dir, (".applying-" if direction == "up" else ".reverting-")
                               + migration.id)
    shutil.rmtree(snapshot_dir, ignore_errors=True)
    try:
        _snapshot(migration.spec.snapshot, root, snapshot_dir)
    except MigrationError as err:
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        return False, str(err)
    if direction == "up":
        shutil.rmtree(in_progress, ignore_errors=True)
        shutil.copytree(migration.directory, in_progress, symlinks=True)
        script_dir = in_progress
    else:
        atomic_write(in_progress, b"")
        script_dir = migration.directory
    running = Migration(migration.id, script_dir, migration.spec)
    env = script_environment(running, direction, release, layout, root, snapshot_dir)
    try:
        proc = subprocess.run([os.path.join(script_dir, direction)], cwd=script_dir, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=migration.spec.timeout)
        output = proc.stdout.decode("utf-8", "replace")
        ok = proc.returncode == 0
        if not ok:
            output += f"\n{direction} exited {proc.returncode}"
    except subprocess.TimeoutExpired as err:
        output = (err.output or b"").decode("utf-8", "replace") + \
            f"\n{direction} killed after {migration.spec.timeout} s"
        ok = False
    except OSError as err:
        output, ok = f"{direction} cannot run: {err.strerror}", False
    if ok:
        if direction == "up":
            atomic_write(os.path.join(in_progress, "applied.json"),
                         json.dumps({"id": migration.id, "name": migration.spec.name,
                                     "release": release, "time": time.time()}).encode())
            os.makedirs(store.applied_dir, exist_ok=True)
            os.rename(in_progress, os.path.join(store.applied_dir, migration.id))
        else:
            gone = os.path.join(store.dir, f".reverted-{migration.id}")
            os.rename(migration.directory, gone)
            os.unlink(in_progress)
            shutil.rmtree(gone, ignore_errors=True)
    else:
        _restore(migration.spec.snapshot, root, snapshot_dir)
        if direction == "up":
            shutil.rmtree(in_progress, ignore_errors=True)
        else:
            os.unlink(in_progress)
    shutil.rmtree(snapshot_dir, ignore_errors=True)
    return ok, output


def _snapshot(paths, root: str, snapshot_dir: str) -> None:
    os.makedirs(snapshot_dir, mode=0o700)
    for index, path in enumerate(paths):
        live = root.rstrip("/") + path
        if not os.path.lexists(live):
            continue
        proc = subprocess.run(["cp", "-a", "--reflink=auto", live,
                               os.path.join(snapshot_dir, str(index))],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise MigrationError(f"cannot snapshot {path}: {proc.stderr.strip()[-300:]}")
    # only a complete snapshot is ever put back
    atomic_write(os.path.join(snapshot_dir, "complete"), b"")


def _restore(paths, root: str, snapshot_dir: str) -> None:
    if not os.path.exists(os.path.join(snapshot_dir, "complete")):
        return
    for index, path in enumerate(paths):
        live = root.rstrip("/") + path
        saved = os.path.join(snapshot_dir, str(index))
        if os.path.isdir(live) and not os.path.islink(live):
            shutil.rmtree(live)
        elif os.path.lexists(live):
            os.unlink(live)
        if os.path.lexists(saved):
            subprocess.run(["cp", "-a", "--reflink=auto", saved, live], check=True,
                           capture_output=True)


def _recover(store: Store, layout: Layout, root: str, log) -> None:
    """Finish what a power cut interrupted: put the snapshot back, forget the run."""
    try:
        names = os.listdir(store.dir)
    except FileNotFoundError:
        return
    for name in names:
        for prefix in (".applying-", ".reverting-"):
            if name.startswith(prefix):
                migration_id = name[len(prefix):]
                snapshot_dir = os.path.join(store.snapshots, migration_id)
                applied = os.path.join(store.applied_dir, migration_id)
                spec_dir = os.path.join(store.dir, name) if prefix == ".applying-" else applied
                migration = load_migration(spec_dir, migration_id)
                if migration.spec:
                    log(f"{migration_id}: interrupted; restoring its snapshot")
                    _restore(migration.spec.snapshot, root, snapshot_dir)
                path = os.path.join(store.dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
                shutil.rmtree(snapshot_dir, ignore_errors=True)
        if name.startswith(".reverted-"):
            shutil.rmtree(os.path.join(store.dir, name), ignore_errors=True)


# -- mark-good and status ---------------------------------------------------------------

def blocks_mark_good(layout: Layout, root: str, release: str) -> Optional[str]:
    """Why *release* (mounted at *root*) must not be marked good, or None."""
    store = Store(layout)
    last = store.last_run()
    if last and last.get("release") == release and last.get("result") in ("failed", "refused"):
        return f"migrations {last['result']}: {last.get('message', '')}"
    due = plan(store, root)
    if due.problems:
        return "; ".join(due.problems)
    if due.pending:
        names = [f"down {m.id}" for m in due.down] + [f"up {m.id}" for m in due.up]
        return f"migrations have not run yet ({', '.join(names)}): run gitroot migrate"
    return None


def describe(layout: Layout, root: str) -> dict:
    """Applied and pending migrations with their names, and the last run (for status)."""
    store = Store(layout)
    due = plan(store, root)

    def entry(m: Migration) -> dict:
        return {"id": m.id, "name": m.spec.name if m.spec else None,
                "description": m.spec.description if m.spec else None, "problem": m.problem}

    return {"applied": [entry(m) for m in due.applied],
            "pending_up": [entry(m) for m in due.up],
            "pending_down": [entry(m) for m in due.down],
            "problems": due.problems,
            "last_run": store.last_run()}


def require_signed(device, commit: str) -> None:
    """Raise unless *commit* carries a good signature from a trusted key
    (strict, whatever the device's signature_policy says)."""
    from gitroot.signing.verify import TrustConfig, verify_revision
    keys = device.config.trusted_keys
    if not (keys.allowed_signers or keys.keyring):
        raise MigrationError("the device trusts no key (trusted_keys in the configuration)")
    verdict = verify_revision(device.repo, commit,
                              TrustConfig(allowed_signers=keys.allowed_signers,
                                          keyring=keys.keyring), "strict")
    if not verdict.verified:
        raise MigrationError(f"{commit[:12]}: signature not verified")
