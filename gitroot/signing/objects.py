"""Signed git objects as exact bytes: where the signature is, what it signs.

Git signs two kinds of object, each its own way:

* an annotated **tag** carries its signature at the end of the message; the
  signed payload is the tag object up to the *last* line that starts a
  signature armor (as git's ``parse_signed_buffer``);
* a **commit** carries it in a ``gpgsig`` header (``gpgsig-sha256`` in a
  SHA-256 repository) whose continuation lines start with a space; the
  signed payload is the commit object with every signature header removed.

The same rules, run backwards, build signed tags and commits.  Pure
functions over bytes; no shared state.
"""

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from gitroot.errors import MalformedSignatureError

Signer = Callable[[bytes], bytes]

# Armor first lines git recognises, and the format each means.
ARMORS = {
    b"-----BEGIN PGP SIGNATURE-----": "openpgp",
    b"-----BEGIN PGP MESSAGE-----": "openpgp",
    b"-----BEGIN SIGNED MESSAGE-----": "x509",
    b"-----BEGIN SSH SIGNATURE-----": "ssh",
}
SIGNATURE_HEADERS = (b"gpgsig", b"gpgsig-sha256")


@dataclass(frozen=True)
class SignedPayload:
    """A signature separated from the bytes it signs."""

    kind: str                       # "tag" or "commit"
    payload: bytes                  # exactly the bytes that were signed
    signature: Optional[bytes]      # the armored signature, or None if unsigned
    format: Optional[str]           # "ssh", "openpgp", "x509", or None
    timestamp: Optional[int]        # tagger/committer time: git's "verify-time"


def signature_format(signature: bytes) -> Optional[str]:
    """Which format an armored signature is in, from its first line."""
    for marker, fmt in ARMORS.items():
        if signature.startswith(marker):
            return fmt
    return None


def _headers(raw: bytes) -> Tuple[bytes, bytes]:
    """The header block (with its final newline) and the rest (blank line + message)."""
    end = raw.find(b"\n\n")
    if end < 0:
        return raw, b""
    return raw[:end + 1], raw[end + 1:]


def _ident_time(raw: bytes, field: bytes) -> Optional[int]:
    headers, _ = _headers(raw)
    for line in headers.split(b"\n"):
        if line.startswith(field + b" "):
            m = re.search(rb">\s+(\d+)\s+[-+]\d{4}\s*$", line)
            return int(m.group(1)) if m else None
    return None


def tag_headers(raw: bytes) -> Dict[bytes, bytes]:
    """The first value of each header of a raw tag object."""
    headers, _ = _headers(raw)
    out: Dict[bytes, bytes] = {}
    for line in headers.split(b"\n"):
        key, _, value = line.partition(b" ")
        if key and not line.startswith(b" "):
            out.setdefault(key, value)
    return out


def split_tag(raw: bytes) -> SignedPayload:
    """Separate a raw tag object into payload and trailing signature."""
    match = len(raw)
    pos = 0
    while pos < len(raw):
        if any(raw.startswith(marker, pos) for marker in ARMORS):
            match = pos
        eol = raw.find(b"\n", pos)
        pos = len(raw) if eol < 0 else eol + 1
    # A marker inside the headers cannot begin a signature.
    headers, _ = _headers(raw)
    if match < len(headers):
        match = len(raw)
    signature = raw[match:] or None
    return SignedPayload("tag", raw[:match], signature,
                         signature_format(signature) if signature else None,
                         _ident_time(raw, b"tagger"))


def split_commit(raw: bytes, object_format: str = "sha1") -> SignedPayload:
    """Separate a raw commit into payload and the signature for *object_format*.

    Every signature header is removed from the payload (as git does), but
    only ``gpgsig`` counts for a SHA-1 repository and ``gpgsig-sha256`` for
    a SHA-256 one.  Two signature headers for the same format are malformed.
    """
    wanted = b"gpgsig" if object_format == "sha1" else b"gpgsig-sha256"
    headers, rest = _headers(raw)
    kept: List[bytes] = []
    signatures: List[List[bytes]] = []
    current: Optional[List[bytes]] = None
    for line in headers.split(b"\n")[:-1]:
        if line.startswith(b" ") and current is not None:
            current.append(line[1:])
            continue
        current = None
        key, _, value = line.partition(b" ")
        if key in SIGNATURE_HEADERS:
            current = [value]
            if key == wanted:
                signatures.append(current)
            continue
        kept.append(line)
    payload = b"".join(line + b"\n" for line in kept) + rest
    if len(signatures) > 1:
        raise MalformedSignatureError(f"commit has {len(signatures)} "
                                      f"{wanted.decode()} headers")
    signature = b"\n".join(signatures[0]) + b"\n" if signatures else None
    return SignedPayload("commit", payload, signature,
                         signature_format(signature) if signature else None,
                         _ident_time(raw, b"committer"))


def sign_commit_object(raw_commit: bytes, signer: Signer) -> bytes:
    """*raw_commit* with a ``gpgsig`` header holding ``signer(raw_commit)``.

    The header goes at the end of the header block, each signature line
    after the first indented by one space, exactly as git writes it.
    """
    if any(line.split(b" ", 1)[0] in SIGNATURE_HEADERS
           for line in _headers(raw_commit)[0].split(b"\n")):
        raise ValueError("commit is already signed")
    signature = signer(raw_commit)
    headers, rest = _headers(raw_commit)
    if not signature.endswith(b"\n"):
        signature += b"\n"
    lines = signature[:-1].split(b"\n")
    header = b"gpgsig " + lines[0] + b"\n" + b"".join(b" " + line + b"\n" for line in lines[1:])
    return headers + header + rest


def format_tag(target: str, target_type: str, name: str, tagger: bytes,
               message: bytes) -> bytes:
    """The unsigned payload of an annotated tag, as ``git tag`` writes it.

    *tagger* is the identity line value (``Name <email> 1700000000 +0100``).
    A non-empty message ends with a newline.
    """
    if message and not message.endswith(b"\n"):
        message += b"\n"
    return (b"object %s\ntype %s\ntag %s\ntagger %s\n\n"
            % (target.encode(), target_type.encode(), name.encode(), tagger) + message)
