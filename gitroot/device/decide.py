"""The fetcher's accept/refuse decision as a pure function.

:func:`decide` takes the device's state, what the server offers (an
:class:`Offer`: the commit and what the checks found out about it) and the
rules the device runs under (:class:`Rules`), and returns a
:class:`Decision`.  Nothing here reads a file, the clock, the network or
the repository, so every combination of signature verdict, channel
binding, age, descent, hold and abandonment is tested from a table
(tests/unit/test_decide.py), as OSTree tests its boot choice.

The checks, in order; the first that fails decides:

1. **Signature** under the policy (the check itself ran in
   :mod:`gitroot.signing.verify`; a refusal keeps its own error class).
2. **Channel binding** (:mod:`gitroot.signing.channel`): a release bound to
   other branches only is refused; an unbound one is refused under
   ``strict`` and let through with a warning under ``sloppy`` and ``none``.
3. **Age** (``max_signature_age``): applies to whatever the server offers
   *now*, also when that is the release the device already runs, so a
   server that freezes a device on its current release is noticed.
4. The device already runs or tries it: **up-to-date**.
5. It is the trial that ran out of tries: **abandoned**.
6. **Descent** from the current release (trial, else last good).
7. Upgrades are **held** by a manual pin: fetched and checked, not pinned.
8. Otherwise: **pinned** as the next boot's trial.

``allow_downgrade`` (``gitroot fetch --allow-downgrade``, typed by someone on
the device) lifts the descent and age rules; nothing a server or a remote
document says can.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from gitroot.boot.state import State
from gitroot.errors import GitrootError, RefusedReleaseError
from gitroot.signing.channel import TRAILER, binding_problem

DAY = 86400.0


@dataclass(frozen=True)
class Offer:
    """A release the server offers, with what the checks found."""

    commit: str
    signature_refusal: Optional[GitrootError] = None
    """The error the signature check raised; ``None`` when the policy let it through."""
    signature: str = ""
    """The verdict in one line (``good ssh signature by ...``) when it passed."""
    signed_at: Optional[float] = None
    """When it was signed (the signed time, else the commit time)."""
    channels: Optional[Tuple[str, ...]] = None
    """The branches its signed message binds it to; ``None``: unbound."""
    binding_error: Optional[str] = None
    """Why its binding trailers are malformed."""
    descends: Optional[bool] = None
    """A descendant of the current release (or that release itself);
    ``None`` when the device has no current release."""


@dataclass(frozen=True)
class Rules:
    """What the device requires of a release."""

    branch: str
    policy: str = "strict"
    max_signature_age: Optional[float] = None
    allow_downgrade: bool = False
    tries: int = 3
    via: str = ""
    """How the commit was named, for messages: ``""`` (the branch head) or
    ``"update-revision R from the remote configuration"``."""


@dataclass(frozen=True)
class Decision:
    result: str
    """``pinned``, ``up-to-date``, ``held``, ``abandoned`` or ``refused``."""
    message: str
    refusal: Optional[GitrootError] = None
    """For ``refused``: the error to raise (its class sets the exit status)."""
    warnings: Tuple[str, ...] = ()


def _span(seconds: float) -> str:
    if seconds >= 2 * DAY:
        return f"{seconds / DAY:.1f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} s"


def current_release(state: State) -> Optional[str]:
    """The release a new one must descend from: the trial, else the last good."""
    if state.trial is not None:
        return state.trial.commit
    return state.last_good


def decide(state: State, offer: Offer, rules: Rules, now: float) -> Decision:
    """Accept or refuse *offer* (see the module docstring for the order)."""
    commit, short = offer.commit, offer.commit[:12]
    named = f"{short} from {rules.branch}" + (f" ({rules.via})" if rules.via else "")
    warnings = []

    def refused(why: str) -> Decision:
        return Decision("refused", f"refusing {named}: {why}",
                        RefusedReleaseError(f"refusing {named}: {why}"), tuple(warnings))

    if offer.signature_refusal is not None:
        return Decision("refused", str(offer.signature_refusal), offer.signature_refusal,
                        tuple(warnings))

    why, warning = _channel_verdict(offer, rules)
    if warning is not None:
        warnings.append(warning)
    if why is None:
        why = _age_refusal(state, offer, rules, now)
    if why is not None:
        return refused(why)

    signature = offer.signature or f"not verified (policy {rules.policy})"
    if commit in (current_release(state), state.last_good):
        return Decision("up-to-date", f"{rules.branch} is up to date at {short}"
                        + (f" ({rules.via})" if rules.via else ""), None, tuple(warnings))

    if state.abandoned is not None and state.abandoned.commit == commit:
        return Decision("abandoned",
                        f"{short} on {rules.branch} was abandoned after "
                        f"{state.abandoned.tries} boots that never reached mark-good; not "
                        "pinning it again (waiting for a newer release, or 'gitroot pin' "
                        "it by hand)", None, tuple(warnings))

    base = current_release(state)
    if offer.descends is False and not rules.allow_downgrade:
        return refused(f"it is not a descendant of the current release "
                       f"{(base or '-')[:12]} (a downgrade or a rewritten branch; use "
                       "--allow-downgrade on the device to accept it)")

    if state.hold:
        return Decision("held", f"fetched {short} ({signature}) but upgrades are held by "
                        "a manual pin; run 'gitroot pin --release' to resume", None,
                        tuple(warnings))
    return Decision("pinned", f"pinned {named} as the next boot's trial ({rules.tries} "
                    f"tries; {signature})",
                    None, tuple(warnings))


def _channel_verdict(offer: Offer, rules: Rules) -> Tuple[Optional[str], Optional[str]]:
    """(why the release is refused, a warning) for its channel binding:
    bound to another channel or unbound, judged by the signature policy."""
    short = offer.commit[:12]
    if offer.binding_error is not None:
        return offer.binding_error, None
    if offer.channels is None:
        if rules.policy == "strict":
            return (f"it carries no channel binding (a {TRAILER} trailer naming "
                    f"{rules.branch} in its signed message), which the strict "
                    "policy requires"), None
        return None, (f"{short} carries no channel binding (a {TRAILER} trailer naming "
                      f"{rules.branch} in its signed message); allowed by policy "
                      f"{rules.policy}")
    mismatch = binding_problem(offer.channels, rules.branch)
    if mismatch is None:
        return None, None
    if rules.policy != "none":
        return mismatch, None
    return None, f"{short}: {mismatch}; allowed by policy none"


def _age_refusal(state: State, offer: Offer, rules: Rules, now: float) -> Optional[str]:
    """Why a release signed too long ago is refused (``max_signature_age``),
    even the one the device runs: a server that stopped moving is news."""
    if rules.max_signature_age is None or rules.allow_downgrade:
        return None
    age = now - (offer.signed_at if offer.signed_at is not None else 0.0)
    if age <= rules.max_signature_age:
        return None
    offered = "the server still offers only this release" \
        if offer.commit in (current_release(state), state.last_good) \
        else "the server offers a stale release"
    return (f"signed {_span(age)} ago, more than the allowed "
            f"{_span(rules.max_signature_age)}; {offered} (a frozen server?)")
