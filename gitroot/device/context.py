"""One device's view of itself: configuration, boot parameters, repository, state.

The operator verbs (fetch, status, pin, rollback, mark-good, log, diff, gc,
boot-select) all start from a :class:`Device`.  The configuration file and
the kernel command line are read once; the repository is opened on demand.
"""

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterator, Optional, Tuple

from gitroot.boot.cmdline import BootParams, read_cmdline, warn_unknown
from gitroot.device.config import Config, load_config
from gitroot.boot.state import State, StateStore

log = logging.getLogger(__name__)


@dataclass
class Device:
    config: Config
    boot: BootParams
    repository: str
    state_dir: str
    _repo: object = field(default=None, repr=False)

    @property
    def repo(self):
        if self._repo is None:
            from gitroot.git.repository import open_repo
            self._repo = open_repo(self.repository)
        return self._repo

    def store(self, with_repo: bool = True) -> StateStore:
        return StateStore(self.state_dir, self.repo if with_repo else None)

    @contextlib.contextmanager
    def changing_state(self) -> Iterator[Tuple[StateStore, State, Optional[str]]]:
        """The store and its state under the state lock, for a verb that
        changes it.  An unreadable state file is rebuilt from the refs
        (:meth:`StateStore.recover`) with a warning, and the verb's save
        repairs the file instead of failing for ever; the third item is
        that reason, None when the file was read."""
        store = self.store()
        with store.locked():
            state, problem = store.load_or_recover()
            if problem is not None:
                log.warning("%s; rebuilt from refs/gitroot/*", problem)
            yield store, state, problem


def open_device(config_path: Optional[str] = None, repository: Optional[str] = None,
                state_dir: Optional[str] = None) -> Device:
    boot = read_cmdline()
    warn_unknown(boot, log)
    config = load_config(config_path, boot=boot)
    return Device(config=config, boot=boot,
                  repository=repository or config.repository,
                  state_dir=state_dir or config.state_dir)


def device_from_args(args) -> Device:
    return open_device(args.config, args.repository, args.state_dir)


def short(commit: Optional[str]) -> str:
    return commit[:12] if commit else "-"

