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

:func:`choose_boot` is the pure decision the boot path makes:

1. ``update-revision=REV`` on the kernel command line: boot REV (debug pin;
   no try is consumed, nothing is recorded as good).
2. A trial with tries left: consume one try, boot it.
3. A trial with no tries left: abandon it (it never reached mark-good), boot
   the last good release.
4. Otherwise the last good release.

When a boot loader chose (``gitroot.commit=SHA`` on its entry's command
line), the boot path agrees with it: that commit is booted, whatever the
state would have chosen.  The boot loader counts the trial's tries itself;
the state's count is kept in step (a try is consumed when the loader boots
the trial), and a trial whose tries are used up is abandoned when the loader
falls back to the last good release.

Threading/processes: every read-modify-write holds ``STATE_DIR/lock``
(flock), so a fetch, a boot and an operator never interleave.
"""

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterator, List, Optional

from gitroot.errors import GitrootError

STATE_FILE = "state.json"
HISTORY_FILE = "history.log"
LOCK_FILE = "lock"
RUN_DIR_ENV = "GITROOT_RUN_DIR"
DEFAULT_RUN_DIR = "/run/gitroot"
REF_LAST_GOOD = "refs/gitroot/last-good"
REF_PREVIOUS_GOOD = "refs/gitroot/previous-good"
REF_TRIAL = "refs/gitroot/trial"


class StateError(GitrootError):
    exit_code = 8


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
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != 1:
                raise ValueError("unknown version")
            trial = Trial(**data["trial"]) if data.get("trial") else None
            abandoned = Trial(**data["abandoned"]) if data.get("abandoned") else None
            fetch = FetchRecord(**data["last_fetch"]) if data.get("last_fetch") else None
            return cls(last_good=data.get("last_good"),
                       previous_good=data.get("previous_good"), trial=trial,
                       hold=bool(data.get("hold")), abandoned=abandoned,
                       last_fetch=fetch)
        except (ValueError, TypeError, KeyError) as err:
            raise StateError(f"{where}: unreadable state ({err})") from None


@dataclass(frozen=True)
class BootChoice:
    commit: str
    reason: str                 # one of: debug-pin, trial, last-good, loader
    detail: str
    state: State                # the state after this choice (a try consumed)


def choose_boot(state: State, update_revision: Optional[str], now: float,
                loader_commit: Optional[str] = None) -> BootChoice:
    """What to boot, and the state that results (pure).

    *loader_commit* is the commit a boot loader's entry named
    (``gitroot.commit=``): it is booted as the loader decided.
    """
    if update_revision:
        return BootChoice(update_revision, "debug-pin",
                          "update-revision= on the kernel command line", state)
    if loader_commit:
        return _agree_with_loader(state, loader_commit)
    trial = state.trial
    if trial is not None and trial.tries_left > 0:
        left = trial.tries_left - 1
        new = replace(state, trial=replace(trial, tries_left=left))
        return BootChoice(trial.commit, "trial",
                          f"trial, try {trial.tries - left} of {trial.tries}", new)
    if trial is not None:
        state = replace(state, trial=None, abandoned=trial)
        detail = (f"trial {trial.commit[:12]} abandoned after {trial.tries} tries "
                  "without being marked good")
    else:
        detail = "last good release"
    if state.last_good is None:
        raise StateError("nothing to boot: no trial with tries left and no last good release")
    return BootChoice(state.last_good, "last-good", detail, state)


def _agree_with_loader(state: State, commit: str) -> BootChoice:
    trial = state.trial
    if trial is not None and trial.commit == commit:
        left = max(trial.tries_left - 1, 0)
        new = replace(state, trial=replace(trial, tries_left=left))
        return BootChoice(commit, "trial", f"trial chosen by the boot loader, try "
                          f"{min(trial.tries - left, trial.tries)} of {trial.tries}", new)
    if commit == state.last_good:
        if trial is not None and trial.tries_left == 0:
            return BootChoice(commit, "last-good",
                              f"trial {trial.commit[:12]} abandoned after {trial.tries} tries "
                              "without being marked good; the boot loader fell back",
                              replace(state, trial=None, abandoned=trial))
        return BootChoice(commit, "last-good", "last good release (chosen by the boot loader)",
                          state)
    what = "previous good release" if commit == state.previous_good else "release"
    return BootChoice(commit, "loader", f"{what} chosen in the boot loader's menu", state)


def next_boot(state: State, update_revision: Optional[str] = None) -> Optional[BootChoice]:
    """What the next boot would choose, without consuming anything."""
    try:
        return choose_boot(state, update_revision, time.time())
    except StateError:
        return None


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
            with open(self.path) as f:
                return State.from_json(f.read(), self.path)
        except FileNotFoundError:
            return State()
        except OSError as err:
            raise StateError(f"{self.path}: {err.strerror}") from None

    @contextlib.contextmanager
    def locked(self, blocking: bool = True) -> Iterator[None]:
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                raise StateError(f"{self.dir} is locked by another gitroot process") from None
            yield
        finally:
            os.close(fd)

    def save(self, state: State, action: str, by: str, commit: Optional[str] = None,
             detail: str = "") -> None:
        """Protect the named commits with refs, then replace the state file."""
        if self.repo is not None:
            self._protect(state, f"gitroot {action} by {by}")
        atomic_write(self.path, (state.to_json() + "\n").encode())
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


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write, fsync, rename, fsync the directory: all or nothing on power loss."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateError(f"cannot write {path}: {err.strerror}") from None
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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


def record_booted(choice: BootChoice) -> None:
    atomic_write(os.path.join(run_dir(), "booted"),
                 json.dumps({"commit": choice.commit, "reason": choice.reason,
                             "detail": choice.detail, "time": time.time()}).encode())


def mark_good(state: State, booted: Optional[str]) -> State:
    """The booted trial becomes the last good release (pure)."""
    if booted is None:
        raise StateError("cannot tell which release is booted "
                         f"({run_dir()}/booted is missing)")
    if state.trial is not None and state.trial.commit == booted:
        previous = state.last_good if state.last_good != booted else state.previous_good
        return replace(state, last_good=booted, previous_good=previous, trial=None)
    if state.last_good == booted:
        return state
    if state.last_good is None:
        return replace(state, last_good=booted)
    raise StateError(f"the booted release {booted[:12]} is neither the trial nor the last "
                     "good release (a debug pin?); not marking it good")


def schedule_trial(state: State, commit: str, tries: int, hold: bool) -> State:
    return replace(state, trial=Trial(commit, tries, tries, time.time()), hold=hold)

