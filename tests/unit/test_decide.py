"""The fetcher's accept/refuse decision from tables (gitroot.device.decide).

Each row: the device's state, what the server offers (signature verdict,
channel binding, signed time, descent) and the rules -> the result, and for
a refusal the words that say why.  The rows cover signature x channel
binding x age x up-to-date x abandoned x descent x hold.
"""

from dataclasses import replace

import pytest

from gitroot.boot.state import State, Trial
from gitroot.device.decide import Decision, Offer, Rules, decide
from gitroot.errors import (BadSignatureError, NoSignatureError, RefusedReleaseError,
                            SignatureError)

A, B, C, X = ("a" * 40, "b" * 40, "c" * 40, "e" * 40)
NOW = 1_700_000_000.0
DAY = 86400.0
GOOD = "good ssh signature by release@example.org (SHA256:x)"

RUNS_A = State(last_good=A)


def offer(commit=X, **kw):
    base = dict(signature=GOOD, signed_at=NOW - DAY, channels=("stable",), descends=True)
    base.update(kw)
    return Offer(commit, **base)


STRICT = Rules(branch="stable", policy="strict", max_signature_age=30 * DAY)
SLOPPY = replace(STRICT, policy="sloppy")
NONE = replace(STRICT, policy="none")
NO_AGE = replace(STRICT, max_signature_age=None)
DOWNGRADE_OK = replace(STRICT, allow_downgrade=True)

# name, state, offer, rules -> result, words (in the message; for refusals also the
# error class)
TABLE = [
    # signature
    ("good, bound, fresh, newer: pinned", RUNS_A, offer(), STRICT, "pinned", "pinned eeee"),
    ("signature refused", RUNS_A,
     offer(signature="", signature_refusal=BadSignatureError("commit e: bad signature")),
     STRICT, "refused", BadSignatureError),
    ("no signature refused even for the current release", RUNS_A,
     offer(A, signature="", signature_refusal=NoSignatureError("commit a: not signed")),
     STRICT, "refused", NoSignatureError),
    ("unsigned let through by sloppy", RUNS_A, offer(signature=""), SLOPPY, "pinned",
     "not verified (policy sloppy)"),
    # channel binding
    ("bound to another channel", RUNS_A, offer(channels=("experimental",)), STRICT,
     "refused", "signed for experimental, not for stable"),
    ("bound to another channel under sloppy", RUNS_A, offer(channels=("experimental",)),
     SLOPPY, "refused", "not for stable"),
    ("bound to another channel under none: warned", RUNS_A,
     offer(channels=("experimental",)), NONE, "pinned", "pinned"),
    ("bound to several channels incl. ours", RUNS_A, offer(channels=("testing", "stable")),
     STRICT, "pinned", "pinned"),
    ("unbound under strict", RUNS_A, offer(channels=None), STRICT, "refused",
     "no channel binding"),
    ("unbound under sloppy: warned", RUNS_A, offer(channels=None), SLOPPY, "pinned",
     "pinned"),
    ("malformed binding", RUNS_A, offer(channels=None, binding_error="trailer 'a b' bad"),
     SLOPPY, "refused", "trailer 'a b' bad"),
    ("a mismatched binding is refused even when it is the current release", RUNS_A,
     offer(A, channels=("experimental",)), STRICT, "refused", "not for stable"),
    # age: whatever is offered now, also the current release (a freeze)
    ("stale newer release", RUNS_A, offer(signed_at=NOW - 31 * DAY), STRICT, "refused",
     "frozen server"),
    ("stale current release: frozen, not up to date", RUNS_A,
     offer(A, signed_at=NOW - 31 * DAY), STRICT, "refused", "still offers only this"),
    ("stale current trial: frozen", State(last_good=B, trial=Trial(A, 2, 3, 0.0)),
     offer(A, signed_at=NOW - 31 * DAY), STRICT, "refused", "frozen server"),
    ("fresh current release: up to date", RUNS_A, offer(A), STRICT, "up-to-date",
     "up to date at aaaa"),
    ("no age limit: an old current release is up to date", RUNS_A,
     offer(A, signed_at=0.0), NO_AGE, "up-to-date", "up to date"),
    ("age is checked before the hold", replace(RUNS_A, hold=True),
     offer(signed_at=NOW - 31 * DAY), STRICT, "refused", "frozen server"),
    ("--allow-downgrade lifts the age rule", RUNS_A, offer(signed_at=NOW - 31 * DAY),
     DOWNGRADE_OK, "pinned", "pinned"),
    # up to date
    ("offered last good while a trial runs", State(last_good=A, trial=Trial(B, 1, 3, 0.0)),
     offer(A, descends=False), STRICT, "up-to-date", "up to date"),
    # abandoned
    ("abandoned trial offered again", State(last_good=A, abandoned=Trial(X, 0, 3, 0.0)),
     offer(), STRICT, "abandoned", "abandoned after 3 boots"),
    ("abandoned but stale: the freeze shows first",
     State(last_good=A, abandoned=Trial(X, 0, 3, 0.0)), offer(signed_at=NOW - 40 * DAY),
     STRICT, "refused", "frozen server"),
    # descent
    ("not a descendant", RUNS_A, offer(descends=False), STRICT, "refused",
     "not a descendant of the current release aaaa"),
    ("not a descendant of the trial", State(last_good=A, trial=Trial(B, 2, 3, 0.0)),
     offer(descends=False), STRICT, "refused", "current release bbbb"),
    ("--allow-downgrade lifts descent", RUNS_A, offer(descends=False), DOWNGRADE_OK,
     "pinned", "pinned"),
    ("a new device has nothing to descend from", State(), offer(descends=None), STRICT,
     "pinned", "pinned"),
    # hold
    ("held by a manual pin", replace(RUNS_A, hold=True), offer(), STRICT, "held",
     "upgrades are held"),
    ("held, but a downgrade is still refused", replace(RUNS_A, hold=True),
     offer(descends=False), STRICT, "refused", "not a descendant"),
    # the remote document's update-revision obeys the same rules
    ("update-revision from the document: older release refused", RUNS_A,
     offer(B, descends=False), replace(STRICT, via="update-revision bbbb from the remote "
                                                    "configuration"),
     "refused", "update-revision bbbb"),
    ("update-revision from the document: stale release refused", RUNS_A,
     offer(B, signed_at=NOW - 60 * DAY), replace(STRICT, via="update-revision bbbb"),
     "refused", "frozen server"),
    ("update-revision from the document: newer release pinned, not held", RUNS_A,
     offer(B), replace(STRICT, via="update-revision bbbb"), "pinned", "update-revision"),
]


@pytest.mark.parametrize("name, state, offered, rules, result, words", TABLE,
                         ids=[row[0] for row in TABLE])
def test_decide(name, state, offered, rules, result, words):
    decision = decide(state, offered, rules, NOW)
    assert isinstance(decision, Decision)
    assert decision.result == result, decision.message
    if isinstance(words, type):
        assert isinstance(decision.refusal, words)
        assert decision.message == str(decision.refusal)
    else:
        assert words in decision.message
    if result == "refused":
        assert isinstance(decision.refusal, (RefusedReleaseError, SignatureError))
    else:
        assert decision.refusal is None


def test_lax_policies_say_what_they_let_through():
    assert "no channel binding" in decide(RUNS_A, offer(channels=None), SLOPPY,
                                          NOW).warnings[0]
    assert "experimental" in decide(RUNS_A, offer(channels=("experimental",)), NONE,
                                    NOW).warnings[0]
    assert decide(RUNS_A, offer(), STRICT, NOW).warnings == ()


def test_the_age_limit_is_exact():
    rules = replace(STRICT, max_signature_age=10.0)
    assert decide(RUNS_A, offer(signed_at=NOW - 10.0), rules, NOW).result == "pinned"
    assert decide(RUNS_A, offer(signed_at=NOW - 10.5), rules, NOW).result == "refused"
