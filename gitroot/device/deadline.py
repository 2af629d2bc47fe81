"""Overall deadlines for network steps, the same on every supported library set.

requests' ``timeout`` bounds each single read, not a transfer: a server that
sends one byte every few seconds -- in the body, or already in the status
line and headers, which http.client reads before requests returns -- keeps
a download open for days.  Cutting the socket from a watchdog thread needs
the socket, which urllib3 2.x no longer exposes where 1.26 did (and neither
exposes it while the headers are still being read).

So a network step runs under :func:`enforced`: ``setitimer(ITIMER_REAL)``
delivers SIGALRM when the deadline passes, which interrupts whatever system
call blocks (connect, recv, a TLS read, a ``git`` child being waited for),
and the handler raises :class:`DeadlineExceeded`.  It derives from
``BaseException`` so that no ``except Exception`` inside requests, urllib3
or gitroot swallows it; :func:`enforced` turns it into the caller's own
error class on the way out, so callers only ever see a one-line
:class:`~gitroot.errors.GitrootError`.  ``subprocess.run`` kills its child
when interrupted, so a ``git fetch`` under a deadline ends with it.

Deadlines nest: an inner one never outlasts the outer one, and leaving it
re-arms the outer with the time it has left.

Threading: signals are delivered to the main thread only, so deadlines can
be enforced only there (:func:`enforced` raises ``RuntimeError`` elsewhere).
gitroot's fetch runs in the main thread of its own process.
"""

import contextlib
import signal
import threading
import time
from typing import Callable, Iterator

#: A timer shorter than this is not armed: the deadline has passed.
_EPSILON = 0.001


class DeadlineExceeded(BaseException):
    """Raised by the SIGALRM handler inside an :func:`enforced` block."""

    def __init__(self, deadline: "Deadline") -> None:
        super().__init__(deadline.what)
        self.deadline = deadline


class Terminated(BaseException):
    """SIGTERM arrived (systemd's ``TimeoutStartSec``, a shutdown): raised in
    the main thread by :func:`terminate_on_sigterm` so the fetch records a
    ``failed`` result on its way out instead of vanishing."""


def terminate_on_sigterm() -> None:
    """From now on, SIGTERM raises :class:`Terminated` in the main thread."""
    def on_term(signum: int, frame: object) -> None:
        raise Terminated("stopped by SIGTERM (systemd's TimeoutStartSec, or a shutdown)")

    signal.signal(signal.SIGTERM, on_term)


class Deadline:
    """A point in (monotonic) time by which a step must be done."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = float(seconds)
        self.what = what
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def message(self) -> str:
        return (f"{self.what}: not done within {self.seconds:g} s; gave up "
                "(a stalled or deliberately slow server?)")

    def within(self, seconds: float, what: str) -> "Deadline":
        """A deadline of *seconds* for a part of this step, or this one when it
        comes first (then its message is the one that tells)."""
        if self.remaining() <= seconds:
            return self
        return Deadline(seconds, what)


@contextlib.contextmanager
def enforced(deadline: Deadline, error: Callable[[str], Exception]) -> Iterator[Deadline]:
    """Run the block under *deadline*; when it passes, raise ``error(message)``.

    See the module docstring.  *error* is called with one line naming what
    was too slow.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("a network deadline can only be enforced in the main thread")
    left = deadline.remaining()
    if left < _EPSILON:
        raise error(deadline.message())
    outer_handler = signal.getsignal(signal.SIGALRM)
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    outer_at = time.monotonic() + outer_left if outer_left > 0 else None

    def on_alarm(signum: int, frame: object) -> None:
        if outer_at is not None and time.monotonic() >= outer_at - _EPSILON \
                and callable(outer_handler):
            outer_handler(signum, frame)     # the outer deadline is the one that passed
        raise DeadlineExceeded(deadline)

    signal.signal(signal.SIGALRM, on_alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, min(left, outer_left) if outer_left > 0
                             else left)
            try:
                yield deadline
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except DeadlineExceeded as exc:
            if exc.deadline is not deadline:
                raise
            raise error(deadline.message()) from None
    finally:
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_at is not None:
            signal.setitimer(signal.ITIMER_REAL, max(outer_at - time.monotonic(), _EPSILON))
