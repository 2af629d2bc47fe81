"""OpenPGP signatures checked by ``gpgv`` against a dedicated keyring.

``gpgv`` is given an empty temporary home directory and exactly one keyring
(the device's trusted keys), so neither the user's keys nor a trust database
can change the answer.  The verdict is read only from gpgv's machine-readable
``--status-fd`` lines (``VALIDSIG`` carries the fingerprint); the human text
on stderr, which quotes user ids that the key owner chose, is never parsed.

Each call runs one short-lived ``gpgv`` process; safe from any thread.
"""

import base64
import binascii
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

from gitroot.errors import (BadSignatureError, KeyValidityError, MalformedSignatureError,
                            SignatureError, UnsupportedSignatureError,
                            UntrustedSignatureError, UsageError)

ARMOR_BEGIN = b"-----BEGIN PGP SIGNATURE-----"
ARMOR_END = b"-----END PGP SIGNATURE-----"
KEYRING_ARMOR_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
GPGV_TIMEOUT = 60

# Status keywords that each end the check of one signature.
_RESULTS = ("GOODSIG", "BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "ERRSIG")


@dataclass(frozen=True)
class OpenPgpSigner:
    """Who made a good OpenPGP signature, from gpgv's status lines."""

    fingerprint: str            # primary key fingerprint (hex)
    signing_fingerprint: str    # the (sub)key that made the signature
    user_id: str                # from the trusted keyring, not from the signature
    created: int                # signature creation time (seconds since the epoch)


def find_gpgv(gpgv: Optional[str] = None) -> str:
    path = shutil.which(gpgv or "gpgv")
    if path is None:
        raise UsageError("cannot check OpenPGP signatures: gpgv is not installed "
                         "(Debian package gpgv)")
    return path


def _keyring_bytes(path: str) -> bytes:
    """The keyring as binary packets; an ASCII-armored export is decoded here."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UsageError(f"cannot read OpenPGP keyring {path}: {err.strerror}") from None
    if KEYRING_ARMOR_BEGIN not in data[:200]:
        return data
    out = b""
    for block in re.findall(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)"
                            rb"-----END PGP PUBLIC KEY BLOCK-----", data, re.DOTALL):
        lines = block.replace(b"\r", b"").split(b"\n")
        # armor headers ("Comment: ...") end at the first empty line
        if b"" in lines and any(b":" in line for line in lines[:lines.index(b"")]):
            lines = lines[lines.index(b"") + 1:]
        body = b"".join(line for line in lines if line and not line.startswith(b"="))
        try:
            out += base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise UsageError(f"OpenPGP keyring {path}: broken ASCII armor") from None
    return out


def _unescape(text: bytes) -> str:
    """Status-line user ids escape control characters as %XX."""
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  text).decode("utf-8", "replace")


def _dearmor_signature(signature: bytes) -> bytes:
    lines = signature.replace(b"\r", b"").strip().split(b"\n")
    if len(lines) < 3 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise ValueError("not armored")
    body = lines[1:-1]
    if b"" in body:
        body = body[body.index(b"") + 1:]
    return base64.b64decode(b"".join(line for line in body if not line.startswith(b"=")),
                            validate=True)


def issuer_fingerprint(signature: bytes) -> Optional[str]:
    """The issuer fingerprint subpacket of an armored v4 signature, or None.

    Only for naming the key in an error message when gpgv gives just a key
    id (``BADSIG``); the caller checks it ends with that key id, since it is
    the signature's own claim and decides nothing.
    """
    try:
        data = _dearmor_signature(signature)
        tag = data[0]
        if tag & 0xC0 == 0xC0:              # new-format packet header
            first = data[1]
            pos = 2 if first < 192 else 3 if first < 224 else 6
        else:                               # old format: length type in low bits
            pos = 1 + {0: 1, 1: 2, 2: 4}[tag & 3]
        if data[pos] != 4:
            return None
        pos += 4                            # version, type, key algorithm, hash
        for _area in range(2):              # hashed, then unhashed subpackets
            length = int.from_bytes(data[pos:pos + 2], "big")
            area, pos = data[pos + 2:pos + 2 + length], pos + 2 + length
            i = 0
            while i < len(area):
                first = area[i]
                if first < 192:
                    size, i = first, i + 1
                elif first < 255:
                    size, i = ((first - 192) << 8) + area[i + 1] + 192, i + 2
                else:
                    size, i = int.from_bytes(area[i + 1:i + 5], "big"), i + 5
                kind = area[i] & 0x7F
                if kind == 33 and size == 22 and area[i + 1] == 4:
                    return area[i + 2:i + 22].hex().upper()
                i += size
    except (ValueError, IndexError, KeyError, binascii.Error):
        return None
    return None


def parse_status(output: bytes) -> List[List[bytes]]:
    """The ``[GNUPG:]`` lines of a status stream, split into words."""
    lines = []
    for line in output.split(b"\n"):
        if line.startswith(b"[GNUPG:] "):
            lines.append(line[len(b"[GNUPG:] "):].rstrip(b"\r").split(b" "))
    return lines


def verify(signature: bytes, payload: bytes, keyring: str, revision: str = "",
           gpgv: Optional[str] = None) -> OpenPgpSigner:
    """Check a detached armored *signature* of *payload* against *keyring*.

    Returns the signer for a good signature by a key in the keyring that is
    neither expired nor revoked; raises a SignatureError subclass otherwise.
    """
    if not signature.lstrip().startswith(ARMOR_BEGIN):
        raise MalformedSignatureError(f"{revision}: OpenPGP signature does not start with "
                                      f"{ARMOR_BEGIN.decode()}", revision)
    if ARMOR_END not in signature:
        raise MalformedSignatureError(f"{revision}: OpenPGP signature has no "
                                      f"{ARMOR_END.decode()} line (truncated?)", revision)
    program = find_gpgv(gpgv)
    keys = _keyring_bytes(keyring)
    with tempfile.TemporaryDirectory(prefix="gitroot-gpgv-") as home:
        keyring_file = os.path.join(home, "trusted.gpg")
        sig_file = os.path.join(home, "payload.sig")
        data_file = os.path.join(home, "payload")
        for name, content in ((keyring_file, keys), (sig_file, signature),
                              (data_file, payload)):
            with open(name, "wb") as f:
                f.write(content)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
               "GNUPGHOME": home}
        try:
            proc = subprocess.run(
                [program, "--homedir", home, "--keyring", keyring_file,
                 "--status-fd", "1", sig_file, data_file],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, timeout=GPGV_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SignatureError(f"{revision}: cannot run gpgv: {err}", revision) from None
    return interpret_status(parse_status(proc.stdout), proc.returncode, revision,
                            issuer_fingerprint(signature))


def interpret_status(status: List[List[bytes]], returncode: int, revision: str = "",
                     claimed_fingerprint: Optional[str] = None) -> OpenPgpSigner:
    """Turn gpgv's status lines into a signer or the matching SignatureError."""
    keywords: Dict[str, List[bytes]] = {}
    for words in status:
        if words:
            keywords.setdefault(words[0].decode("ascii", "replace"), words[1:])

    def arg(keyword: str, index: int) -> str:
        values = keywords.get(keyword, [])
        return values[index].decode("ascii", "replace") if len(values) > index else ""

    fields = _the_one_result(status, keywords, returncode, revision)
    result = fields[0].decode()
    keyid = fields[1].decode("ascii", "replace") if len(fields) > 1 else "?"
    if result == "BADSIG":
        who = keyid
        if claimed_fingerprint and claimed_fingerprint.endswith(keyid.upper()):
            who = claimed_fingerprint
        raise BadSignatureError(f"{revision}: BAD OpenPGP signature by key {who} "
                                "(content or signature altered)", revision, who)
    if result == "ERRSIG":
        _refuse_unchecked(fields, keywords, keyid, revision)
    fpr = arg("VALIDSIG", 9) or arg("VALIDSIG", 0) or keyid
    _refuse_invalid_key(result, keywords, fpr, revision)
    # GOODSIG: believe it only together with VALIDSIG and a zero exit status.
    if "VALIDSIG" not in keywords or returncode != 0:
        raise BadSignatureError(f"{revision}: gpgv reported GOODSIG without VALIDSIG "
                                f"(exit status {returncode})", revision, keyid)
    signing_fpr = arg("VALIDSIG", 0)
    if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", fpr) or \
            not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", signing_fpr):
        raise MalformedSignatureError(f"{revision}: gpgv printed an unexpected VALIDSIG "
                                      "line", revision)
    created_text = arg("VALIDSIG", 2)
    goodsig = keywords["GOODSIG"]
    user_id = _unescape(b" ".join(goodsig[1:])) if len(goodsig) > 1 else ""
    return OpenPgpSigner(fingerprint=fpr, signing_fingerprint=signing_fpr,
                         user_id=user_id,
                         created=int(created_text) if created_text.isdigit() else 0)


def _the_one_result(status: List[List[bytes]], keywords: Dict[str, List[bytes]],
                    returncode: int, revision: str) -> List[bytes]:
    """The one result line (GOODSIG, BADSIG, ERRSIG, ...) of one signature;
    none or several make the block malformed."""
    results = [words for words in status if words and words[0].decode() in _RESULTS]
    if not results:
        if "NODATA" in keywords or "BADARMOR" in keywords or "UNEXPECTED" in keywords:
            raise MalformedSignatureError(f"{revision}: OpenPGP signature block holds no "
                                          "readable signature (truncated or garbled armor)",
                                          revision)
        raise MalformedSignatureError(f"{revision}: gpgv found no signature to check "
                                      f"(exit status {returncode})", revision)
    if len(results) > 1 or sum(1 for w in status if w and w[0] == b"NEWSIG") > 1:
        raise MalformedSignatureError(f"{revision}: more than one OpenPGP signature in "
                                      "one signature block", revision)
    return results[0]


def _refuse_unchecked(fields: List[bytes], keywords: Dict[str, List[bytes]], keyid: str,
                      revision: str) -> None:
    """ERRSIG: the signature could not be checked; say whether for want of
    the key (untrusted), an algorithm gpgv lacks, or another reason."""
    rc = fields[6].decode("ascii", "replace") if len(fields) > 6 else ""
    who = fields[7].decode("ascii", "replace") if len(fields) > 7 and fields[7] != b"-" \
        else keyid
    if rc == "9" or "NO_PUBKEY" in keywords:
        raise UntrustedSignatureError(f"{revision}: OpenPGP signature by key {who}, "
                                      "which is not in the trusted keyring", revision, who)
    if rc == "4":
        raise UnsupportedSignatureError(f"{revision}: OpenPGP signature by key {who} "
                                        "uses an unsupported algorithm", revision, who)
    raise BadSignatureError(f"{revision}: OpenPGP signature by key {who} could not be "
                            f"checked (gpgv error code {rc or '?'})", revision, who)


def _refuse_invalid_key(result: str, keywords: Dict[str, List[bytes]], fpr: str,
                        revision: str) -> None:
    """A mathematically good signature by an expired or revoked key, or one
    that has itself expired, is still refused."""
    if result == "EXPKEYSIG" or "KEYEXPIRED" in keywords:
        raise KeyValidityError(f"{revision}: OpenPGP signature by key {fpr}, which has "
                               "expired", revision, fpr)
    if result == "REVKEYSIG" or "KEYREVOKED" in keywords:
        raise KeyValidityError(f"{revision}: OpenPGP signature by key {fpr}, which has "
                               "been revoked", revision, fpr)
    if result == "EXPSIG":
        raise KeyValidityError(f"{revision}: OpenPGP signature by key {fpr} has expired",
                               revision, fpr)
