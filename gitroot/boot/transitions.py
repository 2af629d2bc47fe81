"""The device's boot decisions as pure functions: state in, state out.

Nothing here reads a file, the clock or the kernel command line: callers
pass ``now``, the booted commit and ``update-revision=``, so every
transition is tested from tables (tests/unit/test_transitions.py), the way
OSTree tests its ``otcore`` boot choice.  Callers hold the state lock
around load -> transition -> save.

:func:`choose_boot` is the boot path's decision:

1. ``update-revision=REV`` on the kernel command line: boot REV (debug pin;
   no try is consumed, nothing is recorded as good).
2. A trial with tries left: consume one try, boot it.
3. A trial with no tries left, or one that cannot be booted: abandon it
   (it never reached mark-good).
4. The first of these that can be booted: the last good release, the
   previous good release, the newest release ``refs/gitroot/*`` names.
"""

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

from gitroot.boot.state import State, Trial
from gitroot.errors import StateError, UsageError

# BootChoice.reason values; the initramfs script matches on them.
REASON_DEBUG_PIN = "debug-pin"
REASON_TRIAL = "trial"
REASON_LAST_GOOD = "last-good"
REASON_PREVIOUS_GOOD = "previous-good"
REASON_FALLBACK = "fallback"


@dataclass(frozen=True)
class BootChoice:
    commit: str
    reason: str                 # REASON_*
    detail: str
    state: State                # the state after this choice (a try consumed)


def _always(commit: str) -> bool:
    return True


def choose_boot(state: State, update_revision: Optional[str], now: float,
                usable: Callable[[str], bool] = _always,
                named_by_refs: Sequence[str] = ()) -> BootChoice:
    """What to boot, and the state that results.

    *usable* says whether a commit can be booted at all (present in the
    repository; the boot path also leaves out what it already failed to
    mount).  *named_by_refs* are the releases ``refs/gitroot/*`` name,
    newest first: the last resort when the state names nothing usable (a
    lost or damaged state file, a last good release whose objects are gone).
    """
    if update_revision:
        return BootChoice(update_revision, REASON_DEBUG_PIN,
                          "update-revision= on the kernel command line", state)
    trial = state.trial
    if trial is not None and trial.tries_left > 0 and usable(trial.commit):
        left = trial.tries_left - 1
        new = replace(state, trial=replace(trial, tries_left=left))
        return BootChoice(trial.commit, REASON_TRIAL,
                          f"trial, try {trial.tries - left} of {trial.tries}", new)
    if trial is not None:
        state = replace(state, trial=None, abandoned=trial)
        if trial.tries_left > 0:
            detail = f"trial {trial.commit[:12]} cannot be booted (missing) and was abandoned"
        else:
            detail = (f"trial {trial.commit[:12]} abandoned after {trial.tries} tries "
                      "without being marked good")
    else:
        detail = ""
    for commit, reason, what in ((state.last_good, REASON_LAST_GOOD, "last good release"),
                                 (state.previous_good, REASON_PREVIOUS_GOOD,
                                  "previous good release")):
        if commit is not None and usable(commit):
            if reason != REASON_LAST_GOOD:
                what += f" (last good {(state.last_good or '-')[:12]} cannot be booted)"
            return BootChoice(commit, reason, f"{detail}; {what}" if detail else what, state)
    for commit in named_by_refs:
        if usable(commit):
            what = "newest release named by refs/gitroot/ (the state names nothing bootable)"
            return BootChoice(commit, REASON_FALLBACK,
                              f"{detail}; {what}" if detail else what, state)
    raise StateError("nothing to boot: no trial with tries left, and no last good, previous "
                     "good or other release named by refs/gitroot/ that can be booted")


def next_boot(state: State, update_revision: Optional[str], now: float,
              usable: Callable[[str], bool] = _always,
              named_by_refs: Sequence[str] = ()) -> Optional[BootChoice]:
    """What the next boot would choose (None: nothing bootable)."""
    try:
        return choose_boot(state, update_revision, now, usable, named_by_refs)
    except StateError:
        return None


def mark_good(state: State, booted: Optional[str]) -> State:
    """The booted trial becomes the last good release.

    *booted* is None when the boot path left no record: refuse, since
    marking the wrong release good would make it the fallback.
    """
    if booted is None:
        raise StateError("cannot tell which release is booted (no boot record in /run)")
    if state.trial is not None and state.trial.commit == booted:
        previous = state.last_good if state.last_good != booted else state.previous_good
        return replace(state, last_good=booted, previous_good=previous, trial=None)
    if state.last_good == booted:
        return state
    if state.last_good is None:
        return replace(state, last_good=booted)
    raise StateError(f"the booted release {booted[:12]} is neither the trial nor the last "
                     "good release (a debug pin?); not marking it good")


def schedule_trial(state: State, commit: str, tries: int, hold: bool, now: float) -> State:
    """Make *commit* the next boot's trial with *tries* attempts."""
    return replace(state, trial=Trial(commit, tries, tries, now), hold=hold)


def release_hold(state: State) -> State:
    """Let fetches schedule new releases again."""
    return replace(state, hold=False)


@dataclass(frozen=True)
class Rollback:
    state: State
    commit: Optional[str]       # what the next boot runs
    detail: str
    cancelled: Optional[str]    # the unbooted trial that was dropped, if that is what happened


def rollback(state: State, booted: Optional[str], tries: int, now: float) -> Rollback:
    """Back to the previous good release, holding upgrades.

    A trial that was scheduled but is not what runs now was never booted:
    rolling back then means cancelling it, so the next boot is the last good
    release again (not the one before it).
    """
    trial = state.trial
    if trial is not None and booted != trial.commit:
        return Rollback(replace(state, trial=None, hold=True), state.last_good,
                        f"cancelled trial {trial.commit[:12]}", trial.commit)
    target = state.previous_good
    if target is None:
        raise UsageError("no previous good release to roll back to")
    return Rollback(schedule_trial(state, target, tries, hold=True, now=now), target,
                    "back to the previous good release", None)
