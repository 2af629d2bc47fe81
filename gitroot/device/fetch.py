"""The fetcher: bring in a new release, check it, pin it as the next trial.

One run (``gitroot fetch``, at boot and from a timer):

1. Take the fetch lock (``STATE_DIR/fetch.lock``); a second fetch fails at once.
   The state lock is taken only to decide and record (steps 4-5).
2. Decide the branch: ``fetch-revision=`` on the kernel command line, else
   the remote configuration document, else the config file.  ``noupgrade``
   from any of them means no fetch at all.
3. Transfer with the ``git`` program (smart HTTP, ``file://``, a path, or a
   bundle file) or from a static directory of bundles, into the quarantine
   ref ``refs/gitroot/incoming/BRANCH`` only.  A transfer killed at any
   point leaves at most unreferenced temporary packs; no pin moves.
4. Check the release: signature under the configured policy; a descendant of
   the current release (no downgrade unless asked); not older than the
   configured maximum age (a frozen server).
5. Install its kernel and initrd into the boot directory (write, fsync,
   rename), then pin it as the trial with N tries and record the result.

Refusals and failures are recorded in the state's ``last_fetch`` so that
``gitroot status`` says why nothing was pinned; the pins themselves are
untouched.

Threading: one fetch per device at a time (the lock); the fetcher holds a
repository handle and a :class:`gitroot.boot.state.StateStore`.
"""

import logging
import os
import subprocess
import time
from dataclasses import dataclass, replace
from typing import List, Optional

import pygit2

from gitroot.errors import (FetchError, GitrootError, RefusedReleaseError, SignatureError)
from gitroot.boot.state import FETCH_LOCK_FILE, FetchRecord, StateStore, booted_commit
from gitroot.boot.transitions import schedule_trial
from gitroot.device.bootfiles import install_boot_files
from gitroot.git.command import failure_summary, run_git

log = logging.getLogger(__name__)

INCOMING = "refs/gitroot/incoming/"


@dataclass
class FetchSettings:
    """What one fetch needs, already merged from config, cmdline and remote doc."""

    repository: str
    state_dir: str
    boot_dir: Optional[str]
    branch: str
    sources: List[str]
    policy: str
    allowed_signers: Optional[str]
    keyring: Optional[str]
    tries: int
    max_signature_age: Optional[int]
    noupgrade: bool = False
    allow_downgrade: bool = False
    progress: bool = False
    #: update-revision= (a debug pin) and who set it: "cmdline" (the boot
    #: path boots it; the fetch only makes sure it is present and signed) or
    #: "remote" (the fleet's document: scheduled as a held trial)
    pinned: Optional[str] = None
    pinned_source: Optional[str] = None


@dataclass
class FetchOutcome:
    result: str                 # pinned | up-to-date | held | abandoned | skipped
    message: str
    commit: Optional[str] = None


def record_skipped(store: StateStore, branch: str, message: str) -> None:
    """Record a fetch that did not run (noupgrade), so status says why."""
    with store.locked():
        state = store.load()
        store.save(replace(state, last_fetch=FetchRecord(time.time(), "skipped", message,
                                                          branch=branch)), "", "fetch")


class Fetcher:
    def __init__(self, settings: FetchSettings, repo: pygit2.Repository):
        self.settings = settings
        self.repo = repo
        self.store = StateStore(settings.state_dir, repo)

    # -- the run ---------------------------------------------------------

    def run(self) -> FetchOutcome:
        s = self.settings
        if s.noupgrade:
            log.info("noupgrade is set: not fetching")
            return FetchOutcome("skipped", "noupgrade is set: not fetching")
        if not s.sources:
            raise FetchError("no remote to fetch from: set 'remotes' in the config "
                             "or pass --from")
        # The fetch lock covers the transfer; the state lock only the
        # decision and its record (a boot's mark-good must not wait behind a
        # download: every boot spent waiting is a try used up).
        with self.store.locked(blocking=False, name=FETCH_LOCK_FILE):
            try:
                commit = self._transfer()
                if s.pinned:
                    pinned = self._resolve_or_fetch(s.pinned)
                    with self.store.locked():
                        return self._debug_pin(s.pinned, pinned)
                with self.store.locked():
                    return self._consider(commit)
            except Exception as err:
                # Whatever ended this fetch is recorded, so status can say
                # why nothing was pinned; cli.main() words the error itself.
                result = "refused" if isinstance(err, (RefusedReleaseError, SignatureError)) \
                    else "failed"
                message = str(err) if isinstance(err, GitrootError) else \
                    f"{type(err).__name__}: {err}"
                with self.store.locked():
                    self._record(FetchRecord(time.time(), result, message, branch=s.branch))
                raise

    def _record(self, record: FetchRecord, state=None, action: str = "",
                commit: Optional[str] = None) -> None:
        """Save *record* as the last fetch (the caller holds the state lock)."""
        state = state if state is not None else self.store.load()
        self.store.save(replace(state, last_fetch=record), action, "fetch", commit,
                        record.message)

    def _transfer(self) -> str:
        s = self.settings
        errors = []
        for source in s.sources:
            log.info("fetching %s from %s", s.branch, source)
            try:
                if _is_static(source):
                    from gitroot.device.static import fetch_static
                    state = self.store.load()
                    have = [c for c in (state.last_good, state.trial and state.trial.commit)
                            if c]
                    commit = fetch_static(source, self.repo, s.branch, have,
                                          os.path.join(s.state_dir, "downloads"))
                else:
                    commit = self._git_fetch(source)
                log.info("fetched %s: %s", s.branch, commit)
                return commit
            except FetchError as err:
                log.warning("%s", err)
                errors.append(str(err))
        raise FetchError("; ".join(errors) if len(errors) > 1 else errors[0])

    def _git_fetch(self, source: str) -> str:
        s = self.settings
        ref = INCOMING + s.branch
        self._run_git_fetch(source, f"+refs/heads/{s.branch}:{ref}")
        try:
            return str(self.repo.references[ref].resolve().target)
        except KeyError:
            raise FetchError(f"{source} has no branch {s.branch}") from None

    def _run_git_fetch(self, source: str, refspec: str) -> None:
        s = self.settings
        if source.startswith("-"):
            raise FetchError(f"refusing remote {source!r}")
        args = ["-c", "protocol.file.allow=always",
                "-c", "http.lowSpeedLimit=1024", "-c", "http.lowSpeedTime=60",
                "-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true",
                "fetch", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                "--progress" if s.progress else "--quiet",
                "--", source, refspec]
        proc = run_git(self.repo.path, *args, stdout=subprocess.DEVNULL,
                       stderr=None if s.progress else subprocess.PIPE)
        if proc.returncode != 0:
            what = s.branch if refspec.startswith("+refs/heads/") else refspec.split(":")[0][1:]
            raise FetchError(f"fetching {what} from {source} failed: "
                             f"{failure_summary(proc.stderr, proc.returncode)}")

    # -- deciding --------------------------------------------------------

    def _consider(self, commit: str) -> FetchOutcome:
        s = self.settings
        state = self.store.load()
        current = [c for c in (state.trial.commit if state.trial else None,
                               state.last_good) if c]
        if commit in current:
            msg = f"{s.branch} is up to date at {commit[:12]}"
            log.info("%s", msg)
            self._record(FetchRecord(time.time(), "up-to-date", msg, commit, s.branch), state)
            return FetchOutcome("up-to-date", msg, commit)

        if state.abandoned is not None and state.abandoned.commit == commit:
            msg = (f"{commit[:12]} on {s.branch} was abandoned after {state.abandoned.tries} "
                   "boots that never reached mark-good; not pinning it again (waiting for a "
                   "newer release, or 'gitroot pin' it by hand)")
            log.warning("%s", msg)
            self._record(FetchRecord(time.time(), "abandoned", msg, commit, s.branch), state)
            return FetchOutcome("abandoned", msg, commit)

        verdict = self._verify(commit)
        base = current[0] if current else None
        if base is not None and not s.allow_downgrade and \
                not self._descends(commit, base):
            raise RefusedReleaseError(
                f"refusing {commit[:12]} from {s.branch}: it is not a descendant of the "
                f"current release {base[:12]} (a downgrade or a rewritten branch; "
                "use --allow-downgrade to accept it)")
        if s.max_signature_age is not None:
            when = verdict.signed_at or self.repo[pygit2.Oid(hex=commit)].commit_time
            age = time.time() - when
            if age > s.max_signature_age:
                raise RefusedReleaseError(
                    f"refusing {commit[:12]}: signed {age / 86400:.1f} days ago, more than "
                    f"the allowed {s.max_signature_age / 86400:.1f} days (a frozen server?)")
        verdict_text = verdict.summary()
        if state.hold:
            msg = (f"fetched {commit[:12]} ({verdict_text}) but upgrades are held by a "
                   "manual pin; run 'gitroot pin --release' to resume")
            log.info("%s", msg)
            self._record(FetchRecord(time.time(), "held", msg, commit, s.branch, verdict_text),
                         state)
            return FetchOutcome("held", msg, commit)

        if s.boot_dir:
            install_boot_files(self.repo, commit, s.boot_dir,
                               keep=[c for c in (booted_commit(), state.last_good,
                                                 state.previous_good) if c])
        new_state = schedule_trial(state, commit, s.tries, hold=False, now=time.time())
        msg = f"pinned {commit[:12]} from {s.branch} as the next boot's trial " \
              f"({s.tries} tries; {verdict_text})"
        self._record(FetchRecord(time.time(), "pinned", msg, commit, s.branch, verdict_text),
                     new_state, action="trial", commit=commit)
        log.info("%s", msg)
        return FetchOutcome("pinned", msg, commit)

    def _debug_pin(self, rev: str, commit: str) -> FetchOutcome:
        """Make sure the update-revision is signed; schedule it when the
        remote document asked for it (the kernel command line's pin is
        booted directly by the boot path).  Caller holds the state lock."""
        s = self.settings
        verdict_text = self._verify(commit).summary()
        state = self.store.load()
        if s.pinned_source != "remote":
            msg = (f"update-revision {rev} is {commit[:12]} ({verdict_text}); the boot path "
                   "boots it while it is on the kernel command line")
            self._record(FetchRecord(time.time(), "debug-pin", msg, commit, s.branch,
                                     verdict_text), state)
            return FetchOutcome("debug-pin", msg, commit)
        if state.trial is not None and state.trial.commit == commit and state.hold:
            msg = f"update-revision {rev} ({commit[:12]}) is already pinned"
            self._record(FetchRecord(time.time(), "up-to-date", msg, commit, s.branch,
                                     verdict_text), state)
            return FetchOutcome("up-to-date", msg, commit)
        new_state = schedule_trial(state, commit, s.tries, hold=True, now=time.time())
        msg = (f"pinned {commit[:12]} (update-revision {rev} from the remote configuration) "
               f"as the next boot's trial, upgrades held ({verdict_text})")
        self._record(FetchRecord(time.time(), "pinned", msg, commit, s.branch, verdict_text),
                     new_state, action="pin", commit=commit)
        log.info("%s", msg)
        return FetchOutcome("pinned", msg, commit)

    def _resolve_or_fetch(self, rev: str) -> str:
        from gitroot.git.repository import resolve_commit
        from gitroot.errors import RepositoryError
        try:
            return str(resolve_commit(self.repo, rev).id)
        except RepositoryError:
            pass
        if len(rev) != 40:
            raise FetchError(f"update-revision {rev} is not in the repository; name it by "
                             "its full 40-digit id so it can be fetched")
        errors = []
        for source in self.settings.sources:
            if _is_static(source):
                continue
            try:
                self._run_git_fetch(source, f"+{rev}:{INCOMING}pinned")
                return str(resolve_commit(self.repo, rev).id)
            except (FetchError, RepositoryError) as err:
                errors.append(str(err))
        raise FetchError(f"update-revision {rev} could not be fetched: " + "; ".join(errors))

    def _descends(self, commit: str, base: str) -> bool:
        """Is *commit* *base* or a descendant of it?  Asked of git itself,
        which honours the shallow boundary ``gitroot gc`` leaves."""
        proc = run_git(self.repo.path, "merge-base", "--is-ancestor", base, commit)
        return proc.returncode == 0

    def _verify(self, commit: str):
        from gitroot.signing.verify import TrustConfig, verify_revision
        s = self.settings
        trust = TrustConfig(allowed_signers=s.allowed_signers, keyring=s.keyring)
        verdict = verify_revision(self.repo, commit, trust, s.policy)
        for warning in verdict.warnings:
            log.warning("%s", warning)
        log.info("signature: %s", verdict.summary())
        return verdict


def _is_static(source: str) -> bool:
    return source.startswith(("http://", "https://")) and \
        (source.endswith("/") or source.endswith("/index.json"))


def reboot() -> None:
    subprocess.run(["systemctl", "reboot"] if os.path.exists("/run/systemd/system")
                   else ["reboot"], check=False)

