"""The boot decisions from tables (OSTree's test-otcore.c is the model):
each row is a state, an input and the exact state or error that follows."""

from dataclasses import replace

import pytest

from gitroot.boot.state import State, Trial
from gitroot.boot.transitions import (choose_boot, mark_good, next_boot, release_hold,
                                      rollback, schedule_trial)
from gitroot.errors import StateError, UsageError

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)
NOW = 1_700_000_000.0


def trial(commit, left, tries=3):
    return Trial(commit, left, tries, 1.0)


# state, update_revision -> (commit, reason, state after)
CHOOSE = [
    ("last good only", State(last_good=A), None, (A, "last-good", State(last_good=A))),
    ("trial, first try", State(last_good=A, trial=trial(B, 3)), None,
     (B, "trial", State(last_good=A, trial=trial(B, 2)))),
    ("trial, last try", State(last_good=A, trial=trial(B, 1)), None,
     (B, "trial", State(last_good=A, trial=trial(B, 0)))),
    ("trial out of tries is abandoned", State(last_good=A, trial=trial(B, 0)), None,
     (A, "last-good", State(last_good=A, abandoned=trial(B, 0)))),
    ("debug pin consumes nothing", State(last_good=A, trial=trial(B, 2)), C,
     (C, "debug-pin", State(last_good=A, trial=trial(B, 2)))),
    ("debug pin with no state at all", State(), C, (C, "debug-pin", State())),
    ("hold does not change the choice", State(last_good=A, trial=trial(B, 1), hold=True), None,
     (B, "trial", State(last_good=A, trial=trial(B, 0), hold=True))),
    ("abandoned again replaces the older one",
     State(last_good=A, trial=trial(C, 0), abandoned=trial(B, 0)), None,
     (A, "last-good", State(last_good=A, abandoned=trial(C, 0)))),
]


@pytest.mark.parametrize("name, state, pin, expected", CHOOSE, ids=[r[0] for r in CHOOSE])
def test_choose_boot(name, state, pin, expected):
    choice = choose_boot(state, pin, NOW)
    assert (choice.commit, choice.reason, choice.state) == expected


@pytest.mark.parametrize("state", [State(), State(trial=trial(B, 0))])
def test_nothing_to_boot(state):
    with pytest.raises(StateError, match="nothing to boot"):
        choose_boot(state, None, NOW)
    assert next_boot(state, None, NOW) is None


# The fallback order when releases are missing (or failed to mount this boot):
# trial, last good, previous good, the newest release refs/gitroot/* name.
# state, present commits, refs (newest first) -> (commit, reason, state after)
FALLBACK = [
    ("last good missing: previous good", State(last_good=A, previous_good=B), {B}, (),
     (B, "previous-good", State(last_good=A, previous_good=B))),
    ("last good and previous good missing: newest named by refs",
     State(last_good=A, previous_good=B), {C, D}, (D, C),
     (D, "fallback", State(last_good=A, previous_good=B))),
    ("refs name missing releases too: the first present one",
     State(last_good=A), {C}, (D, C), (C, "fallback", State(last_good=A))),
    ("missing trial is abandoned at once, tries unspent",
     State(last_good=A, trial=trial(B, 3)), {A}, (),
     (A, "last-good", State(last_good=A, abandoned=trial(B, 3)))),
    ("missing trial and missing last good", State(last_good=A, previous_good=C,
                                                  trial=trial(B, 2)), {C}, (),
     (C, "previous-good", State(last_good=A, previous_good=C, abandoned=trial(B, 2)))),
    ("lost state: refs alone decide", State(), {A, B}, (B, A), (B, "fallback", State())),
    ("present last good wins over newer refs", State(last_good=A), {A, D}, (D, A),
     (A, "last-good", State(last_good=A))),
    ("present previous good only", State(previous_good=A), {A}, (),
     (A, "previous-good", State(previous_good=A))),
    ("debug pin is not checked here (the boot script drops it if it fails)",
     State(last_good=A), set(), (), StateError),
]


@pytest.mark.parametrize("name, state, present, refs, expected", FALLBACK,
                         ids=[r[0] for r in FALLBACK])
def test_choose_boot_falls_back_to_what_exists(name, state, present, refs, expected):
    if expected is StateError:
        with pytest.raises(StateError, match="nothing to boot"):
            choose_boot(state, None, NOW, present.__contains__, refs)
        assert choose_boot(state, C, NOW, present.__contains__, refs).commit == C
        return
    choice = choose_boot(state, None, NOW, present.__contains__, refs)
    assert (choice.commit, choice.reason, choice.state) == expected
    assert next_boot(state, None, NOW, present.__contains__, refs).commit == expected[0]


def test_next_boot_is_choose_boot_without_consuming():
    state = State(last_good=A, trial=trial(B, 2))
    assert next_boot(state, None, NOW).commit == B
    assert state.trial.tries_left == 2


# state, booted -> state after (or an error)
MARK_GOOD = [
    ("booted trial becomes last good", State(last_good=A, previous_good=D, trial=trial(B, 1)), B,
     State(last_good=B, previous_good=A)),
    ("already last good: no change", State(last_good=A, previous_good=D), A,
     State(last_good=A, previous_good=D)),
    ("first release of a new device", State(), A, State(last_good=A)),
    ("trial equal to last good keeps previous", State(last_good=A, previous_good=D,
                                                     trial=trial(A, 1)), A,
     State(last_good=A, previous_good=D)),
    ("a debug pin is not marked good", State(last_good=A, trial=trial(B, 1)), C,
     StateError),
    ("no boot record", State(last_good=A), None, StateError),
    ("hold survives", State(last_good=A, trial=trial(B, 1), hold=True), B,
     State(last_good=B, previous_good=A, hold=True)),
]


@pytest.mark.parametrize("name, state, booted, expected", MARK_GOOD,
                         ids=[r[0] for r in MARK_GOOD])
def test_mark_good(name, state, booted, expected):
    if expected is StateError:
        with pytest.raises(StateError):
            mark_good(state, booted)
    else:
        assert mark_good(state, booted) == expected


def test_schedule_trial_and_release_hold():
    state = schedule_trial(State(last_good=A, abandoned=trial(C, 0)), B, 4, hold=True, now=NOW)
    assert state == State(last_good=A, trial=Trial(B, 4, 4, NOW), hold=True,
                          abandoned=trial(C, 0))
    assert release_hold(state) == replace(state, hold=False)


# state, booted -> (next commit, state after, cancelled) or error
ROLLBACK = [
    ("booted last good: back to previous good", State(last_good=B, previous_good=A), B,
     (A, State(last_good=B, previous_good=A, trial=Trial(A, 3, 3, NOW), hold=True), None)),
    ("booted trial: back to previous good", State(last_good=B, previous_good=A,
                                                  trial=trial(C, 2)), C,
     (A, State(last_good=B, previous_good=A, trial=Trial(A, 3, 3, NOW), hold=True), None)),
    ("unbooted trial is cancelled, not rolled past",
     State(last_good=B, previous_good=A, trial=trial(C, 3)), B,
     (B, State(last_good=B, previous_good=A, hold=True), C)),
    ("unbooted trial, nothing recorded as booted",
     State(last_good=B, trial=trial(C, 3)), None,
     (B, State(last_good=B, hold=True), C)),
    ("no previous good release", State(last_good=B), B, UsageError),
]


@pytest.mark.parametrize("name, state, booted, expected", ROLLBACK,
                         ids=[r[0] for r in ROLLBACK])
def test_rollback(name, state, booted, expected):
    if expected is UsageError:
        with pytest.raises(UsageError, match="no previous good release"):
            rollback(state, booted, 3, NOW)
        return
    result = rollback(state, booted, 3, NOW)
    assert (result.commit, result.state, result.cancelled) == expected
