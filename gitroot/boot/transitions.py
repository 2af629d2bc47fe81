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
3. A trial with no tries left: abandon it (it never reached mark-good), boot
   the last good release.
4. Otherwise the last good release.
"""

from dataclasses import dataclass, replace
from typing import Optional

from gitroot.boot.state import State, Trial
from gitroot.errors import StateError, UsageError

# BootChoice.reason values; the initramfs script matches on them.
REASON_DEBUG_PIN = "debug-pin"
REASON_TRIAL = "trial"
REASON_LAST_GOOD = "last-good"


@dataclass(frozen=True)
class BootChoice:
    commit: str
    reason: str                 # REASON_*
    detail: str
    state: State                # the state after this choice (a try consumed)


def choose_boot(state: State, update_revision: Optional[str], now: float) -> BootChoice:
    """What to boot, and the state that results."""
    if update_revision:
        return BootChoice(update_revision, REASON_DEBUG_PIN,
                          "update-revision= on the kernel command line", state)
    trial = state.trial
    if trial is not None and trial.tries_left > 0:
        left = trial.tries_left - 1
        new = replace(state, trial=replace(trial, tries_left=left))
        return BootChoice(trial.commit, REASON_TRIAL,
                          f"trial, try {trial.tries - left} of {trial.tries}", new)
    if trial is not None:
        state = replace(state, trial=None, abandoned=trial)
        detail = (f"trial {trial.commit[:12]} abandoned after {trial.tries} tries "
                  "without being marked good")
    else:
        detail = "last good release"
    if state.last_good is None:
        raise StateError("nothing to boot: no trial with tries left and no last good release")
    return BootChoice(state.last_good, REASON_LAST_GOOD, detail, state)


def next_boot(state: State, update_revision: Optional[str], now: float) -> Optional[BootChoice]:
    """What the next boot would choose (None: nothing bootable)."""
    try:
        return choose_boot(state, update_revision, now)
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
