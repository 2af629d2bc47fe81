"""The fetcher: bring in a new release, check it, pin it as the next trial.

One run (``gitroot fetch``, at boot and from a timer):

1. Take the fetch lock (``STATE_DIR/fetch.lock``); a second fetch fails at once.
   The state lock is taken only to decide and record (steps 4-5).  Remove
   what a fetch cut off by a power cut left in the repository
   (:mod:`gitroot.device.leftovers`).
2. Decide the branch: ``fetch-revision=`` on the kernel command line, else
   the remote configuration document, else the config file.  ``noupgrade``
   from any of them means no fetch at all.
3. Transfer with the ``git`` program (smart HTTP, ``file://``, a path, or a
   bundle file) or from a static directory of bundles, into the quarantine
   ref ``refs/gitroot/incoming/BRANCH`` only, all under one overall
   deadline (``fetch_timeout``, :mod:`gitroot.device.deadline`).  A
   transfer killed at any point leaves at most unreferenced temporary
   packs; no pin moves.
4. Check the release -- the branch head, or the remote document's
   ``update-revision`` -- and decide (:func:`gitroot.device.decide.decide`,
   pure): signature under the policy, channel binding, age (also of the
   release the device already runs: a frozen server), descent from the
   current release, abandoned, held.
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
from dataclasses import dataclass, field, replace
from typing import List, Optional

import pygit2

from gitroot.errors import (FetchError, GitrootError, RefusedReleaseError, SignatureError)
from gitroot.boot.state import (FETCH_LOCK_FILE, FetchRecord, State, StateStore, bootable,
                                booted_commit)
from gitroot.boot.transitions import schedule_trial
from gitroot.device.bootfiles import install_boot_files
from gitroot.device.deadline import Deadline, Terminated, enforced
from gitroot.device.leftovers import remove_interrupted_fetch
from gitroot.device.decide import Offer, Rules, current_release, decide
from gitroot.git.command import failure_summary, run_git
from gitroot.git.refs import branch_name_problem

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
    #: "remote" (the fleet's document: considered instead of the branch head,
    #: under every rule a fetched release obeys, and never holding upgrades)
    pinned: Optional[str] = None
    pinned_source: Optional[str] = None
    #: overall deadline of the transfer, seconds (config fetch_timeout)
    fetch_timeout: float = 2 * 3600.0
    #: problems met before the fetch that did not stop it (an ignored remote
    #: document); recorded with the fetch's result
    warnings: List[str] = field(default_factory=list)
    #: bootloader.type and bootloader.cmdline: with a boot loader, the
    #: release's kernel and initrd go where it reads them, with its entry
    bootloader: str = "none"
    cmdline: str = ""


@dataclass
class FetchOutcome:
    result: str                 # pinned | up-to-date | held | abandoned | skipped
    message: str
    commit: Optional[str] = None


def record_skipped(store: StateStore, branch: str, message: str) -> None:
    """Record a fetch that did not run (noupgrade), so status says why."""
    with store.locked():
        state, _problem = store.load_or_recover()   # saving repairs an unreadable file
        store.save(replace(state, last_fetch=FetchRecord(time.time(), "skipped", message,
                                                          branch=branch)), "", "fetch")


class Fetcher:
    def __init__(self, settings: FetchSettings, repo: pygit2.Repository):
        self.settings = settings
        self.repo = repo
        self.store = StateStore(settings.state_dir, repo)
        self._recorded = False      # this run's result is in the state already

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
            remove_interrupted_fetch(self.repo.path)
            try:
                # One deadline for every network step of this fetch: a server
                # that dribbles must not keep the fetch lock for ever.
                transfer = Deadline(s.fetch_timeout, f"fetching {s.branch}")
                with enforced(transfer, FetchError):
                    commit = self._transfer(transfer)
                    if s.pinned:
                        commit = self._resolve_or_fetch(s.pinned)
                if s.pinned and s.pinned_source != "remote":
                    with self.store.locked():
                        return self._debug_pin(s.pinned, commit)
                via = f"update-revision {s.pinned} from the remote configuration" \
                    if s.pinned else ""
                with self.store.locked():
                    return self._consider(commit, via)
            except BaseException as err:
                # Whatever ended this fetch is recorded, so status can say
                # why nothing was pinned; cli.main() words the error itself.
                if self._recorded:
                    raise
                result = "refused" if isinstance(err, (RefusedReleaseError, SignatureError)) \
                    else "failed"
                message = str(err) if isinstance(err, (GitrootError, Terminated)) else \
                    "interrupted" if isinstance(err, KeyboardInterrupt) else \
                    f"{type(err).__name__}: {err}".rstrip(": ")
                with self.store.locked():
                    self._record(FetchRecord(time.time(), result, message, branch=s.branch,
                                             warnings=tuple(s.warnings)))
                raise

    def _load(self) -> State:
        """The state; an unreadable file is rebuilt from the refs (and then
        rewritten by this fetch's record) instead of stopping every fetch."""
        state, problem = self.store.load_or_recover()
        if problem is not None:
            log.warning("%s; rebuilt from refs/gitroot/*", problem)
        return state

    def _record(self, record: FetchRecord, state: Optional[State] = None, action: str = "",
                commit: Optional[str] = None) -> None:
        """Save *record* as the last fetch (the caller holds the state lock)."""
        state = state if state is not None else self._load()
        self._recorded = True
        self.store.save(replace(state, last_fetch=record), action, "fetch", commit,
                        record.message)

    def _transfer(self, deadline: "Deadline") -> str:
        s = self.settings
        errors = []
        for source in s.sources:
            log.info("fetching %s from %s", s.branch, source)
            try:
                if _is_static(source):
                    from gitroot.device.static import fetch_static
                    state = self._load()
                    have = [c for c in (state.last_good, state.trial and state.trial.commit)
                            if c]
                    commit = fetch_static(source, self.repo, s.branch, have,
                                          os.path.join(s.state_dir, "downloads"),
                                          deadline=deadline)
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
        problem = branch_name_problem(s.branch)
        if problem is not None:     # git would read '*' as a glob refspec
            raise FetchError(f"invalid branch name {s.branch!r}: {problem}")
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
        # core.fsync: git's default leaves refs unsynced, so a power cut just
        # after a fetch could leave the incoming ref empty while its pack
        # is on the medium; sync the ref too (git < 2.36 ignores the key).
        args = ["-c", "protocol.file.allow=always",
                "-c", "core.fsync=objects,derived-metadata,reference",
                "-c", "http.lowSpeedLimit=1024", "-c", "http.lowSpeedTime=60",
                "-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true",
                "fetch", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                "--progress" if s.progress else "--quiet",
                "--", source, refspec]
        proc = run_git(self.repo.path, *args, stdout=subprocess.DEVNULL,
                       stderr=None if s.progress else subprocess.PIPE, own_group=True)
        if proc.returncode != 0:
            what = s.branch if refspec.startswith("+refs/heads/") else refspec.split(":")[0][1:]
            raise FetchError(f"fetching {what} from {source} failed: "
                             f"{failure_summary(proc.stderr, proc.returncode)}")

    # -- deciding --------------------------------------------------------

    def _examine(self, commit: str, state: State) -> Offer:
        """What the checks find out about *commit* (gitroot.device.decide.Offer)."""
        try:
            verdict = self._verify(commit)
        except SignatureError as err:
            return Offer(commit, signature_refusal=err)
        signed_at = verdict.signed_at if verdict.signed_at is not None \
            else self.repo[pygit2.Oid(hex=commit)].commit_time
        # Descent from what the device can really run: a current release
        # whose objects are gone (the boot falls back past it) is no base.
        base = next((c for c in (current_release(state), state.previous_good)
                     if c is not None and bootable(self.repo, c)), None)
        descends = None if base is None else \
            (commit == base or self._descends(commit, base))
        return Offer(commit, signature=verdict.summary(), signed_at=float(signed_at),
                     channels=verdict.channels, binding_error=verdict.binding_error,
                     descends=descends)

    def _consider(self, commit: str, via: str = "") -> FetchOutcome:
        """Decide on *commit* and record it (the caller holds the state lock)."""
        s = self.settings
        state = self._load()
        offer = self._examine(commit, state)
        rules = Rules(branch=s.branch, policy=s.policy, max_signature_age=s.max_signature_age,
                      allow_downgrade=s.allow_downgrade, tries=s.tries, via=via)
        decision = decide(state, offer, rules, time.time())
        warnings = tuple(s.warnings) + decision.warnings
        for warning in decision.warnings:
            log.warning("%s", warning)
        if decision.refusal is not None:
            self._record(FetchRecord(time.time(), "refused", decision.message, commit,
                                     s.branch, None, warnings), state)
            raise decision.refusal
        record = FetchRecord(time.time(), decision.result, decision.message, commit, s.branch,
                             offer.signature or None, warnings)
        if decision.result != "pinned":
            log.info("%s", decision.message)
            self._record(record, state)
            return FetchOutcome(decision.result, decision.message, commit)
        if s.boot_dir and s.bootloader == "none":
            install_boot_files(self.repo, commit, s.boot_dir,
                               keep=[c for c in (booted_commit(), state.last_good,
                                                 state.previous_good) if c])
        new_state = schedule_trial(state, commit, s.tries, hold=False, now=time.time())
        self._record(record, new_state, action="trial", commit=commit)
        if s.bootloader != "none":
            # after the state: a power cut in between leaves a trial the
            # loader does not know yet, which the next sync (mark-good)
            # hands it; the other way round the loader would boot a commit
            # the state does not name
            from gitroot.device.bootloader import sync_boot_loader
            sync_boot_loader(self.repo, new_state, booted_commit(), s.bootloader, s.boot_dir,
                             s.cmdline)
        log.info("%s", decision.message)
        return FetchOutcome("pinned", decision.message, commit)

    def _debug_pin(self, rev: str, commit: str) -> FetchOutcome:
        """Make sure the kernel command line's update-revision is present and
        signed; the boot path boots it while it is there.  Caller holds the
        state lock."""
        s = self.settings
        verdict_text = self._verify(commit).summary()
        msg = (f"update-revision {rev} is {commit[:12]} ({verdict_text}); the boot path "
               "boots it while it is on the kernel command line")
        self._record(FetchRecord(time.time(), "debug-pin", msg, commit, s.branch,
                                 verdict_text, tuple(s.warnings)))
        return FetchOutcome("debug-pin", msg, commit)

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

