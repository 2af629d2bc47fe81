"""Channel binding: the branches a release is meant for, inside what is signed.

A server decides which commit a branch name points at, and ref names are not
signed: without a binding, a commit validly signed for ``experimental`` is
accepted by a device following ``stable`` when the server points ``stable``
at it (a sidegrade, or "channel replay").  OSTree closes this hole with the
``ostree.ref-binding`` metadata of the signed commit; gitroot records the
channels as trailers of the signed commit's (or tag's) message::

    release 42

    Gitroot-Channel: testing
    Gitroot-Channel: stable

``gitroot commit --branch B`` writes ``Gitroot-Channel: B`` (and one more
line per ``--channel``); plain git can write the same with
``git commit -S --trailer "Gitroot-Channel: stable"``.  The trailers are
part of the message, so the signature covers them, and the fetcher refuses
a release whose binding does not name the branch it follows
(:mod:`gitroot.device.decide`).

Only the message's last paragraph counts, as for git's own trailers, so a
channel named in prose further up binds nothing.  Pure functions; no state.
"""

from typing import Iterable, Optional, Tuple

from gitroot.git.refs import branch_name_problem

TRAILER = "Gitroot-Channel"
_PREFIX = TRAILER.lower() + ":"


class BindingError(ValueError):
    """A binding trailer that names no valid branch (the release is malformed)."""


def _last_paragraph(message: str) -> str:
    paragraphs = [p for p in message.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return paragraphs[-1] if paragraphs else ""


def channels_of_message(message: str) -> Optional[Tuple[str, ...]]:
    """The channels the message's trailers bind to; ``None`` if it has none.

    Raises :class:`BindingError` for a ``Gitroot-Channel`` trailer whose value
    is not a branch name.
    """
    channels = []
    for line in _last_paragraph(message).split("\n"):
        if not line.lower().startswith(_PREFIX):
            continue
        name = line[len(_PREFIX):].strip()
        problem = branch_name_problem(name) if name else "it is empty"
        if problem is not None:
            raise BindingError(f"{TRAILER} trailer {name[:80]!r} is not a branch name: "
                               f"{problem}")
        channels.append(name)
    return tuple(dict.fromkeys(channels)) if channels else None


def channels_of_object(raw: bytes) -> Optional[Tuple[str, ...]]:
    """The binding in a raw commit or tag object (its message after the headers).

    A tag's message ends with its signature block; that block is not a
    paragraph of trailers, so it is cut off first.
    """
    end = raw.find(b"\n\n")
    message = raw[end + 2:] if end >= 0 else b""
    armor = message.find(b"\n-----BEGIN ")
    if message.startswith(b"-----BEGIN "):
        message = b""
    elif armor >= 0:
        message = message[:armor + 1]
    return channels_of_message(message.decode("utf-8", "replace"))


def bind_message(message: str, channels: Iterable[str]) -> str:
    """*message* with one ``Gitroot-Channel`` trailer per channel not yet bound.

    The trailers join a trailer paragraph the message already ends with, or
    start a new paragraph.  Raises :class:`BindingError` for a bad name.
    """
    wanted = []
    for name in channels:
        problem = branch_name_problem(name)
        if problem is not None:
            raise BindingError(f"channel {name!r} is not a branch name: {problem}")
        wanted.append(name)
    present = channels_of_message(message) or ()
    missing = [c for c in dict.fromkeys(wanted) if c not in present]
    text = message.rstrip("\n")
    if not missing:
        return text + "\n"
    lines = "".join(f"{TRAILER}: {name}\n" for name in missing)
    if present:          # the last paragraph already is the binding: extend it
        return text + "\n" + lines
    return (text + "\n\n" if text else "") + lines


def binding_problem(channels: Optional[Tuple[str, ...]], branch: str) -> Optional[str]:
    """Why a release bound to *channels* may not be taken from *branch*;
    ``None`` when the binding names it.  An unbound release (``None``) is
    the caller's decision (the policy), not a mismatch."""
    if channels is None or branch in channels:
        return None
    return (f"it is signed for {', '.join(channels)}, not for {branch} "
            "(a release from another channel)")
