"""SSH signatures (OpenSSH's ``SSHSIG`` format) checked in-process.

This is what ``ssh-keygen -Y verify`` does for git, without ``ssh-keygen``:
parse the armored ``SSHSIG`` blob, check the signature over the signed data
with ``cryptography``, then look the key up in an allowed-signers file in
OpenSSH's format (see ``ALLOWED SIGNERS`` in ssh-keygen(1)).

Supported keys: ``ssh-ed25519``, ``ecdsa-sha2-nistp256/384/521``, and
``ssh-rsa`` keys signing with ``rsa-sha2-256`` or ``rsa-sha2-512``.
Everything else (DSA, security-key ``sk-*`` keys, certificates) is refused
with :class:`~gitroot.errors.UnsupportedSignatureError`, and ``cert-authority``
lines in an allowed-signers file never match.

Pure functions over bytes; no shared state, safe from any thread.
"""

import base64
import binascii
import calendar
import hashlib
import re
import struct
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gitroot.errors import (BadSignatureError, KeyValidityError, MalformedSignatureError,
                            UnsupportedSignatureError, UntrustedSignatureError, UsageError)

ARMOR_BEGIN = b"-----BEGIN SSH SIGNATURE-----"
ARMOR_END = b"-----END SSH SIGNATURE-----"
MAGIC = b"SSHSIG"
SIG_VERSION = 1
GIT_NAMESPACE = "git"

_CURVES = {
    "ecdsa-sha2-nistp256": ("nistp256", ec.SECP256R1, hashes.SHA256),
    "ecdsa-sha2-nistp384": ("nistp384", ec.SECP384R1, hashes.SHA384),
    "ecdsa-sha2-nistp521": ("nistp521", ec.SECP521R1, hashes.SHA512),
}
_RSA_SIG_HASHES = {"rsa-sha2-256": hashes.SHA256, "rsa-sha2-512": hashes.SHA512}
_MESSAGE_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
SUPPORTED_KEY_TYPES = ("ssh-ed25519", "ssh-rsa") + tuple(_CURVES)
RSA_MIN_BITS = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
RSA_MAX_BITS = 16384  # OpenSSH's SSH_RSA_MAXIMUM_MODULUS_SIZE


class _FormatError(ValueError):
    pass


class _Reader:
    """SSH wire format (RFC 4251): uint32 and length-prefixed strings."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise _FormatError("truncated")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return value

    def string(self) -> bytes:
        length = self.uint32()
        if self.pos + length > len(self.data):
            raise _FormatError("truncated")
        value = self.data[self.pos:self.pos + length]
        self.pos += length
        return value

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError:
            raise _FormatError("non-ASCII name") from None

    def mpint(self) -> int:
        value = self.string()
        if value and value[0] & 0x80:
            raise _FormatError("negative integer")
        return int.from_bytes(value, "big")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise _FormatError("trailing bytes")


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def fingerprint(key_blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob."""
    digest = base64.b64encode(hashlib.sha256(key_blob).digest()).rstrip(b"=")
    return "SHA256:" + digest.decode("ascii")


def key_type(key_blob: bytes) -> str:
    try:
        return _Reader(key_blob).text()
    except _FormatError:
        return "?"


@dataclass(frozen=True)
class SshSignature:
    """A parsed ``SSHSIG`` blob."""

    key_blob: bytes
    namespace: str
    reserved: bytes
    hash_algorithm: str
    signature: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_blob)

    @property
    def key_type(self) -> str:
        return key_type(self.key_blob)


def dearmor(armored: bytes) -> bytes:
    """The binary blob inside ``-----BEGIN SSH SIGNATURE-----`` armor.

    Raises MalformedSignatureError for missing markers, text around them, or
    bad base64.  (Like OpenSSH, whitespace at line ends is tolerated.)
    """
    lines = [line.strip() for line in armored.strip().split(b"\n")]
    if not lines or lines[0] != ARMOR_BEGIN:
        raise MalformedSignatureError("SSH signature does not start with "
                                      f"{ARMOR_BEGIN.decode()}")
    if len(lines) < 3 or lines[-1] != ARMOR_END:
        raise MalformedSignatureError(f"SSH signature has no {ARMOR_END.decode()} line "
                                      "(truncated?)")
    body = b"".join(lines[1:-1])
    if not re.fullmatch(rb"[A-Za-z0-9+/]*={0,2}", body):
        raise MalformedSignatureError("SSH signature armor holds characters that are "
                                      "not base64")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedSignatureError("SSH signature armor is not valid base64") from None


def parse(armored: bytes) -> SshSignature:
    """Parse an armored SSH signature; MalformedSignatureError if it is not one."""
    blob = dearmor(armored)
    r = _Reader(blob)
    try:
        if blob[:6] != MAGIC:
            raise _FormatError("no SSHSIG magic")
        r.pos = 6
        version = r.uint32()
        if version != SIG_VERSION:
            raise _FormatError(f"unknown version {version}")
        key_blob = r.string()
        namespace = r.text()
        reserved = r.string()
        hash_algorithm = r.text()
        signature = r.string()
        r.done()
        _Reader(key_blob).text()
    except _FormatError as err:
        raise MalformedSignatureError(f"SSH signature blob is malformed: {err}") from None
    return SshSignature(key_blob, namespace, reserved, hash_algorithm, signature)


def signed_data(sig: SshSignature, message: bytes) -> bytes:
    """What the key actually signed: the SSHSIG preamble plus H(message)."""
    digest = _MESSAGE_HASHES[sig.hash_algorithm](message).digest()
    return (MAGIC + _string(sig.namespace.encode()) + _string(sig.reserved)
            + _string(sig.hash_algorithm.encode()) + _string(digest))


def check_signature(sig: SshSignature, message: bytes, namespace: str = GIT_NAMESPACE) -> None:
    """Check that *sig* is a valid signature of *message* by its embedded key.

    Says nothing about whether that key is trusted (see
    :meth:`AllowedSigners.check`).  Raises BadSignatureError,
    UnsupportedSignatureError or MalformedSignatureError.
    """
    fpr = sig.fingerprint
    ktype = sig.key_type
    if sig.namespace != namespace:
        raise BadSignatureError(f"SSH signature by {fpr} was made for namespace "
                                f"{sig.namespace!r}, not {namespace!r}", fingerprint=fpr)
    if sig.hash_algorithm not in _MESSAGE_HASHES:
        raise UnsupportedSignatureError(f"SSH signature by {fpr} uses unsupported hash "
                                        f"{sig.hash_algorithm!r}", fingerprint=fpr)
    if ktype.endswith("-cert-v01@openssh.com"):
        raise UnsupportedSignatureError(f"SSH signature by certificate {fpr}: "
                                        "certificates are not supported", fingerprint=fpr)
    if ktype not in SUPPORTED_KEY_TYPES:
        raise UnsupportedSignatureError(f"SSH signature by {fpr} uses unsupported key type "
                                        f"{ktype!r}", fingerprint=fpr)
    try:
        verify_raw(sig.key_blob, sig.signature, signed_data(sig, message))
    except _FormatError as err:
        raise MalformedSignatureError(f"SSH signature by {fpr} is malformed: {err}",
                                      fingerprint=fpr) from None
    except _Unsupported as err:
        raise UnsupportedSignatureError(f"SSH signature by {fpr}: {err}",
                                        fingerprint=fpr) from None
    except InvalidSignature:
        raise BadSignatureError(f"SSH signature by {fpr} does not match the signed "
                                "content", fingerprint=fpr) from None


class _Unsupported(ValueError):
    pass


def verify_raw(key_blob: bytes, sig_blob: bytes, data: bytes) -> None:
    """Check an SSH signature blob over *data*; InvalidSignature if it does not match."""
    key = _Reader(key_blob)
    ktype = key.text()
    sig = _Reader(sig_blob)
    sig_type = sig.text()
    sig_bytes = sig.string()
    sig.done()
    if ktype == "ssh-ed25519":
        raw = key.string()
        key.done()
        if len(raw) != 32:
            raise _FormatError("ed25519 key is not 32 bytes")
        if sig_type != ktype:
            raise InvalidSignature()
        if len(sig_bytes) != 64:
            raise InvalidSignature()
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(sig_bytes, data)
    elif ktype in _CURVES:
        curve_name, curve, hash_cls = _CURVES[ktype]
        if key.text() != curve_name:
            raise _FormatError("ECDSA key curve does not match its type")
        point = key.string()
        key.done()
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(curve(), point)
        except ValueError:
            raise _FormatError("ECDSA key point is invalid") from None
        if sig_type != ktype:
            raise InvalidSignature()
        rs = _Reader(sig_bytes)
        try:
            r_value, s_value = rs.mpint(), rs.mpint()
            rs.done()
        except _FormatError:
            raise InvalidSignature() from None
        public.verify(encode_dss_signature(r_value, s_value), data, ec.ECDSA(hash_cls()))
    elif ktype == "ssh-rsa":
        e_value, n_value = key.mpint(), key.mpint()
        key.done()
        if not RSA_MIN_BITS <= n_value.bit_length() <= RSA_MAX_BITS:
            raise _Unsupported(f"RSA key of {n_value.bit_length()} bits is not supported "
                               f"({RSA_MIN_BITS} to {RSA_MAX_BITS} bits)")
        if sig_type not in _RSA_SIG_HASHES:
            # OpenSSH refuses SHA-1 ("ssh-rsa") signatures in SSHSIG too.
            raise _Unsupported(f"RSA signature algorithm {sig_type!r} is not supported")
        try:
            public = rsa.RSAPublicNumbers(e_value, n_value).public_key()
        except ValueError:
            raise _FormatError("RSA key is invalid") from None
        public.verify(sig_bytes, data, padding.PKCS1v15(), _RSA_SIG_HASHES[sig_type]())
    else:
        raise _Unsupported(f"unsupported key type {ktype!r}")


# -- allowed signers ----------------------------------------------------------

@dataclass
class AllowedSigner:
    """One line of an allowed-signers file."""

    principals: str
    key_blob: bytes
    namespaces: Optional[str] = None
    valid_after: Optional[int] = None
    valid_before: Optional[int] = None
    cert_authority: bool = False
    line: int = 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_blob)


@dataclass
class AllowedSigners:
    """A parsed allowed-signers file (OpenSSH format, as git uses it).

    Supported: principals (a comma-separated pattern list), the options
    ``namespaces="..."``, ``valid-after="..."``, ``valid-before="..."``, and
    ``cert-authority`` (parsed, but such lines never match: certificates are
    not supported).  A line gitroot cannot parse is an error, not skipped:
    this file is the root of trust.
    """

    path: str
    entries: List[AllowedSigner] = field(default_factory=list)

    @classmethod
    def load(cls, path: str) -> "AllowedSigners":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise UsageError(f"cannot read allowed-signers file {path}: "
                             f"{err.strerror}") from None
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data: bytes, path: str = "<allowed-signers>") -> "AllowedSigners":
        signers = cls(path)
        for number, raw in enumerate(data.split(b"\n"), 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise UsageError(f"{path}:{number}: not UTF-8") from None
            if not line or line.startswith("#"):
                continue
            try:
                signers.entries.append(_parse_signer_line(line, number))
            except _FormatError as err:
                raise UsageError(f"{path}:{number}: {err}") from None
        return signers

    def check(self, sig: SshSignature, when: int, namespace: str = GIT_NAMESPACE,
              revision: str = "") -> AllowedSigner:
        """The entry that trusts *sig*'s key for *namespace* at time *when*.

        Raises UntrustedSignatureError when no line lists the key for this
        namespace, KeyValidityError when the only lines that do are outside
        their valid-after/valid-before window at *when*.
        """
        fpr = sig.fingerprint
        matches = [e for e in self.entries if e.key_blob == sig.key_blob and not e.cert_authority]
        if not matches:
            raise UntrustedSignatureError(
                f"{revision}: signed by SSH key {fpr}, which is not in {self.path}",
                revision, fpr)
        in_namespace = [e for e in matches
                        if e.namespaces is None or match_pattern_list(namespace, e.namespaces)]
        if not in_namespace:
            raise UntrustedSignatureError(
                f"{revision}: SSH key {fpr} is not allowed to sign namespace "
                f"{namespace!r} in {self.path} (line {matches[0].line})", revision, fpr)
        problems = []
        for entry in in_namespace:
            if entry.valid_after is not None and when < entry.valid_after:
                problems.append(f"is not valid until {_show_time(entry.valid_after)} "
                                f"({self.path} line {entry.line})")
            elif entry.valid_before is not None and when > entry.valid_before:
                problems.append(f"expired at {_show_time(entry.valid_before)} "
                                f"({self.path} line {entry.line})")
            else:
                return entry
        raise KeyValidityError(
            f"{revision}: SSH key {fpr} signed at {_show_time(when)}, but the key "
            + "; ".join(problems), revision, fpr)


def _show_time(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _take_field(line: str) -> Tuple[str, str]:
    """The first whitespace-delimited field (double quotes group), and the rest."""
    line = line.lstrip()
    if line.startswith('"'):
        end = line.find('"', 1)
        if end < 0:
            raise _FormatError("unterminated quote")
        return line[1:end], line[end + 1:].lstrip()
    parts = line.split(None, 1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


def _take_options(line: str) -> Tuple[str, str]:
    """Options up to the first whitespace outside quotes, and the rest."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch in " \t" and not quoted:
            return line[:i], line[i:].lstrip()
    if quoted:
        raise _FormatError("unterminated quote in options")
    return line, ""


def _split_options(options: str) -> List[str]:
    out, current, quoted = [], "", False
    for ch in options:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return out


def _try_key(line: str) -> Optional[Tuple[bytes, str]]:
    """(key blob, rest) if *line* starts with 'keytype base64', else None."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not re.fullmatch(r"[a-z0-9@.-]+", parts[0]) \
            or not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", parts[1]):
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    if key_type(blob) != parts[0]:
        return None
    return blob, (parts[2] if len(parts) > 2 else "")


def _parse_signer_line(line: str, number: int) -> AllowedSigner:
    principals, rest = _take_field(line)
    if not principals or not rest:
        raise _FormatError("expected 'principals [options] keytype base64-key'")
    entry = AllowedSigner(principals=principals, key_blob=b"", line=number)
    key = _try_key(rest)
    if key is None:
        options, rest = _take_options(rest)
        for option in _split_options(options):
            name, _, value = option.partition("=")
            name = name.lower()
            if name == "cert-authority" and not value:
                entry.cert_authority = True
            elif name == "namespaces":
                entry.namespaces = _dequote(value, name)
            elif name == "valid-after":
                entry.valid_after = parse_time(_dequote(value, name))
            elif name == "valid-before":
                entry.valid_before = parse_time(_dequote(value, name))
            else:
                raise _FormatError(f"unsupported option {option!r}")
        key = _try_key(rest)
        if key is None:
            raise _FormatError("no valid public key after the options")
    entry.key_blob = key[0]
    return entry


def _dequote(value: str, name: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise _FormatError(f"{name}= needs a double-quoted value")
    return value[1:-1]


def parse_time(text: str) -> int:
    """OpenSSH's absolute time: YYYYMMDD[HHMM[SS]], local time, or UTC with 'Z'."""
    utc = text.endswith(("Z", "z"))
    digits = text[:-1] if utc else text
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if not digits.isdigit() or len(digits) not in formats:
        raise _FormatError(f"invalid time {text!r} (expected YYYYMMDD[HHMM[SS]][Z])")
    try:
        parsed = time.strptime(digits, formats[len(digits)])
    except ValueError:
        raise _FormatError(f"invalid time {text!r}") from None
    return calendar.timegm(parsed) if utc else int(time.mktime(parsed))


def match_pattern_list(value: str, patterns: str) -> bool:
    """OpenSSH's match_pattern_list: comma-separated globs; '!' negates and wins."""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if _glob(value, pattern):
            if negated:
                return False
            matched = True
    return matched


def _glob(value: str, pattern: str) -> bool:
    # OpenSSH patterns know only '*' and '?'; no character classes.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


__all__ = ["AllowedSigner", "AllowedSigners", "SshSignature", "check_signature",
           "dearmor", "fingerprint", "parse", "parse_time", "match_pattern_list"]
