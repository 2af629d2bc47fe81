"""Where a device stands: last good release, trial, hold, fetch results.

The state lives in ``STATE_DIR/state.json`` on the persistent medium, next
to the bare repository.  Every change is written to a temporary file,
fsynced, renamed over the old one and the directory fsynced, so a power cut
at any moment leaves either the old or the new state, never a mix.  The
commits the state names are also held by refs (``refs/gitroot/last-good``,
``refs/gitroot/trial``, ``refs/gitroot/previous-good``) so that ``git gc``
never prunes them; the refs are written *before* the state file that names
them.  ``STATE_DIR/history.log`` is an append-only JSON-lines log of every
pin (``gitroot log``).

The transitions between states are pure functions in
:mod:`gitroot.boot.transitions`; this module only reads, checks and writes.

Threading/processes: every read-modify-write holds ``STATE_DIR/lock``
(flock), so a fetch, a boot and an operator never interleave.
"""

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Tuple

from gitroot import atomic
from gitroot.errors import StateError
from gitroot.git.refs import is_full_object_id

STATE_FILE = "state.json"
HISTORY_FILE = "history.log"
LOCK_FILE = "lock"
FETCH_LOCK_FILE = "fetch.lock"
RUN_DIR_ENV = "GITROOT_RUN_DIR"
DEFAULT_RUN_DIR = "/run/gitroot"
REF_LAST_GOOD = "refs/gitroot/last-good"
REF_PREVIOUS_GOOD = "refs/gitroot/previous-good"
REF_TRIAL = "refs/gitroot/trial"
REF_PREFIX = "refs/gitroot/"
REF_INCOMING = "refs/gitroot/incoming/"
MAX_TRIES = 100
MAX_STATE_BYTES = 1 << 20


@dataclass(frozen=True)
class Trial:
    commit: str
    tries_left: int
    tries: int
    since: float


@dataclass(frozen=True)
class FetchRecord:
    time: float
    result: str               # "pinned", "up-to-date", "held", "abandoned", "refused", "failed"
    message: str
    commit: Optional[str] = None
    branch: Optional[str] = None
    verdict: Optional[str] = None
    #: what went wrong on the way without stopping the fetch (an ignored
    #: remote document, a release let through by a lax policy)
    warnings: Tuple[str, ...] = ()


@dataclass(frozen=True)
class State:
    last_good: Optional[str] = None
    previous_good: Optional[str] = None
    trial: Optional[Trial] = None
    hold: bool = False                  # set by pin/rollback: fetch schedules nothing
    abandoned: Optional[Trial] = None   # the last trial that ran out of tries
    last_fetch: Optional[FetchRecord] = None
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "State":
        """Parse and check a state file; anything unexpected is a StateError
        that says which field is wrong (the file may be damaged or crafted)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise StateError(f"{where}: not a gitroot state file (not JSON)") from None
        if not isinstance(data, dict):
            raise StateError(f"{where}: not a gitroot state file (not a JSON object)")
        if data.get("version") != 1:
            raise StateError(f"{where}: unknown state version {data.get('version')!r}")
        return cls(last_good=_commit_field(data, "last_good", where),
                   previous_good=_commit_field(data, "previous_good", where),
                   trial=_trial_field(data, "trial", where),
                   hold=_typed_field(data, "hold", bool, where, False),
                   abandoned=_trial_field(data, "abandoned", where),
                   last_fetch=_fetch_field(data, "last_fetch", where))


def _typed_field(data: dict, key: str, kind, where: str, default=None):
    value = data.get(key, default)
    if value is None:
        return default
    # bool is an int subclass: a "tries" of true is as wrong as one of "3"
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise StateError(f"{where}: {key} is not a {_KIND_NAMES.get(kind, kind.__name__)}")
    return value


_KIND_NAMES = {bool: "boolean", int: "whole number", float: "number", str: "string",
               dict: "JSON object", list: "JSON list", (int, float): "number"}


def _commit_field(data: dict, key: str, where: str) -> Optional[str]:
    value = data.get(key)
    if value is not None and not is_full_object_id(value):
        raise StateError(f"{where}: {key} is not a full commit id")
    return value


def _trial_field(data: dict, key: str, where: str) -> Optional[Trial]:
    raw = _typed_field(data, key, dict, where)
    if raw is None:
        return None
    name = f"{where}: {key}"
    commit = _commit_field(raw, "commit", name)
    tries = _typed_field(raw, "tries", int, name)
    tries_left = _typed_field(raw, "tries_left", int, name)
    since = _typed_field(raw, "since", (int, float), name, 0.0)
    if commit is None or tries is None or tries_left is None:
        raise StateError(f"{name} lacks its commit, tries or tries_left")
    if not 0 <= tries_left <= tries <= MAX_TRIES:
        raise StateError(f"{name}: tries_left {tries_left} of {tries} is out of range")
    return Trial(commit, tries_left, tries, float(since))


def _fetch_field(data: dict, key: str, where: str) -> Optional["FetchRecord"]:
    raw = _typed_field(data, key, dict, where)
    if raw is None:
        return None
    name = f"{where}: {key}"
    return FetchRecord(time=float(_typed_field(raw, "time", (int, float), name, 0.0)),
                       result=_typed_field(raw, "result", str, name, "") or "",
                       message=_typed_field(raw, "message", str, name, "") or "",
                       commit=_commit_field(raw, "commit", name),
                       branch=_typed_field(raw, "branch", str, name),
                       verdict=_typed_field(raw, "verdict", str, name),
                       warnings=_warnings_field(raw, "warnings", name))


def _warnings_field(data: dict, key: str, where: str) -> Tuple[str, ...]:
    value = _typed_field(data, key, list, where, [])
    if not all(isinstance(item, str) for item in value):
        raise StateError(f"{where}: {key} is not a list of strings")
    return tuple(value)


class StateStore:
    """The state directory of one device (see the module docstring)."""

    def __init__(self, state_dir: str, repo=None):
        self.dir = state_dir
        self.repo = repo        # a pygit2.Repository, for the protecting refs

    @property
    def path(self) -> str:
        return os.path.join(self.dir, STATE_FILE)

    def load(self) -> State:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return State()
        except OSError as err:
            raise StateError(f"{self.path}: {err.strerror}") from None
        if len(raw) > MAX_STATE_BYTES:
            raise StateError(f"{self.path}: not a gitroot state file (over {MAX_STATE_BYTES} bytes)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StateError(f"{self.path}: not a gitroot state file (not UTF-8)") from None
        return State.from_json(text, self.path)

    def load_or_recover(self) -> Tuple[State, Optional[str]]:
        """The state, or -- when the file cannot be read -- one rebuilt from
        the refs (:meth:`recover`) and the reason, so a state-changing verb
        repairs the file by saving instead of failing for ever."""
        try:
            return self.load(), None
        except StateError as err:
            return self.recover(), str(err)

    def recover(self) -> State:
        """A state rebuilt from the refs that protect the pinned releases.

        Last good and previous good come from their refs when those name a
        commit in the repository.  A trial is not rebuilt: how many tries it
        had left is lost, and booting an untried release on a guess is the
        wrong way to err.  Upgrades are not held.
        """
        if self.repo is None:
            return State()
        named = dict(_gitroot_refs(self.repo))
        return State(last_good=named.get(REF_LAST_GOOD),
                     previous_good=named.get(REF_PREVIOUS_GOOD))

    @contextlib.contextmanager
    def locked(self, blocking: bool = True, name: str = LOCK_FILE) -> Iterator[None]:
        """Hold ``STATE_DIR/<name>`` (flock).  The state lock (``lock``) is
        held only to load, decide and save; a fetch holds ``fetch.lock``
        for its transfer, so mark-good, pin and rollback never wait behind
        a download."""
        os.makedirs(self.dir, exist_ok=True)
        try:
            fd = os.open(os.path.join(self.dir, name), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StateError(f"cannot open {os.path.join(self.dir, name)}: "
                             f"{err.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                what = "a fetch is already running" if name == FETCH_LOCK_FILE \
                    else "locked by another gitroot process"
                raise StateError(f"{self.dir}: {what}") from None
            yield
        finally:
            os.close(fd)

    def save(self, state: State, action: str, by: str, commit: Optional[str] = None,
             detail: str = "") -> None:
        """Protect the named commits with refs, then replace the state file."""
        if self.repo is not None:
            self._protect(state, f"gitroot {action} by {by}")
        try:
            atomic.write_file(self.path, (state.to_json() + "\n").encode())
        except OSError as err:
            raise StateError(f"cannot write {self.path}: {err.strerror}") from None
        if action:
            self.append_history(action, by, commit, detail)

    def _protect(self, state: State, message: str) -> None:
        import pygit2
        for ref, commit in ((REF_LAST_GOOD, state.last_good),
                            (REF_PREVIOUS_GOOD, state.previous_good),
                            (REF_TRIAL, state.trial.commit if state.trial else None)):
            try:
                if commit is None:
                    if ref in self.repo.references:
                        self.repo.references.delete(ref)
                else:
                    current = self.repo.references.get(ref)
                    if current is None or str(current.target) != commit:
                        self.repo.create_reference_direct(ref, pygit2.Oid(hex=commit), True,
                                                          message=message)
            except (pygit2.GitError, OSError) as err:
                raise StateError(f"cannot update {ref}: {err}") from None

    def append_history(self, action: str, by: str, commit: Optional[str], detail: str) -> None:
        record = {"time": time.time(), "action": action, "by": by, "commit": commit,
                  "detail": detail}
        path = os.path.join(self.dir, HISTORY_FILE)
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def history(self) -> List[dict]:
        path = os.path.join(self.dir, HISTORY_FILE)
        out = []
        try:
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        out.append(json.loads(raw))
                    except ValueError:
                        continue        # a line torn by a power cut
        except FileNotFoundError:
            pass
        return out


def _gitroot_refs(repo) -> List[Tuple[str, str]]:
    """(ref, commit) for every ``refs/gitroot/*`` ref naming a commit that is
    present, except ``incoming/`` (fetched, not yet checked)."""
    import pygit2
    out = []
    for name in repo.references:
        if not name.startswith(REF_PREFIX) or name.startswith(REF_INCOMING):
            continue
        try:
            target = repo.references[name].resolve().target
            commit = repo.get(target)
        except (KeyError, ValueError, pygit2.GitError):
            continue
        if isinstance(commit, pygit2.Commit):
            out.append((name, str(commit.id)))
    return out


def releases_named_by_refs(repo) -> List[str]:
    """The releases ``refs/gitroot/*`` name (not ``incoming/``), newest
    (by committer time) first: the boot path's last resort."""
    commits = {commit for _ref, commit in _gitroot_refs(repo)}
    return sorted(commits, key=lambda c: (-repo.get(c).commit_time, c))


def bootable(repo, commit: str) -> bool:
    """Whether *commit* is in the repository with its root tree: what a
    boot needs before trying to mount it (a failed mount is the boot
    script's to report)."""
    import pygit2
    if not is_full_object_id(commit):
        try:
            obj = repo.revparse_single(commit)
        except (KeyError, ValueError, pygit2.GitError):
            return False
    else:
        try:
            obj = repo.get(commit)
        except (ValueError, pygit2.GitError):
            return False
    if not isinstance(obj, pygit2.Commit):
        return False
    try:
        return obj.tree_id in repo.odb and repo.get(obj.tree_id) is not None
    except (KeyError, ValueError, pygit2.GitError):
        return False


def run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR)


def booted_commit() -> Optional[str]:
    """The commit this boot runs, as the boot path recorded it in /run."""
    record = booted_record()
    return record.get("commit") if record else None


def booted_record() -> Optional[dict]:
    try:
        with open(os.path.join(run_dir(), "booted")) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def record_booted(commit: str, reason: str, detail: str, now: float) -> None:
    """Tell the booted system what the boot path chose (/run/gitroot/booted)."""
    path = os.path.join(run_dir(), "booted")
    try:
        atomic.write_file(path, json.dumps({"commit": commit, "reason": reason,
                                            "detail": detail, "time": now}).encode())
    except OSError as err:
        raise StateError(f"cannot write {path}: {err.strerror}") from None
