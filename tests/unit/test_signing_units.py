"""Pure parsers of the signing package, from tables: no git, no keys, no gpg."""

import base64
import calendar
import struct
import time

import pytest

from gitroot.errors import (BadSignatureError, KeyValidityError, MalformedSignatureError,
                            UnsupportedSignatureError, UntrustedSignatureError, UsageError)
from gitroot.signing import openpgp, sshsig
from gitroot.signing.objects import sign_commit_object, split_commit, split_tag

# A syntactically valid ed25519 public key (32 bytes of 0x11).
KEY_BLOB = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + b"\x11" * 32
KEY = "ssh-ed25519 " + base64.b64encode(KEY_BLOB).decode()


# -- allowed signers ---------------------------------------------------------------

@pytest.mark.parametrize("line,principals,namespaces,after,before,ca", [
    (f"alice@example.com {KEY}", "alice@example.com", None, None, None, False),
    (f"alice@example.com {KEY} a comment", "alice@example.com", None, None, None, False),
    (f'"alice smith@example.com" {KEY}', "alice smith@example.com", None, None, None, False),
    (f"*@example.com,!bob@example.com {KEY}", "*@example.com,!bob@example.com",
     None, None, None, False),
    (f'a@x namespaces="git,file" {KEY}', "a@x", "git,file", None, None, False),
    (f'a@x valid-after="20200101Z",valid-before="20300101Z" {KEY}', "a@x", None,
     calendar.timegm((2020, 1, 1, 0, 0, 0)), calendar.timegm((2030, 1, 1, 0, 0, 0)), False),
    (f'a@x NAMESPACES="git" {KEY}', "a@x", "git", None, None, False),
    (f"a@x cert-authority {KEY}", "a@x", None, None, None, True),
])
def test_allowed_signers_lines(line, principals, namespaces, after, before, ca):
    signers = sshsig.AllowedSigners.parse(b"# comment\n\n" + line.encode() + b"\n")
    (entry,) = signers.entries
    assert entry.principals == principals
    assert entry.namespaces == namespaces
    assert entry.valid_after == after and entry.valid_before == before
    assert entry.cert_authority is ca
    assert entry.key_blob == KEY_BLOB and entry.line == 3


@pytest.mark.parametrize("line", [
    "alice@example.com",                                    # no key
    f"a@x namespaces=git {KEY}",                            # unquoted value
    f'a@x valid-before="2020-01-01" {KEY}',                 # wrong time format
    f'a@x valid-before="20201301" {KEY}',                   # no such month
    f'a@x no-touch-required {KEY}',                         # unknown option
    f'a@x namespaces="git {KEY}',                           # unterminated quote
    "a@x ssh-ed25519 !!notbase64!!",
    "a@x ssh-rsa " + base64.b64encode(KEY_BLOB).decode(),  # type disagrees with blob
])
def test_allowed_signers_bad_lines_are_errors(line):
    with pytest.raises(UsageError, match=":2: "):
        sshsig.AllowedSigners.parse(b"\n" + line.encode())


def test_allowed_signers_unreadable(tmp_path):
    with pytest.raises(UsageError, match="cannot read allowed-signers"):
        sshsig.AllowedSigners.load(str(tmp_path / "missing"))


@pytest.mark.parametrize("text,expected", [
    ("20240229Z", calendar.timegm((2024, 2, 29, 0, 0, 0))),
    ("202402291230Z", calendar.timegm((2024, 2, 29, 12, 30, 0))),
    ("20240229123059z", calendar.timegm((2024, 2, 29, 12, 30, 59))),
    ("20240229", int(time.mktime((2024, 2, 29, 0, 0, 0, 0, 0, -1)))),
])
def test_parse_time(text, expected):
    assert sshsig.parse_time(text) == expected


@pytest.mark.parametrize("value,patterns,expected", [
    ("git", "git", True),
    ("git", "file", False),
    ("git", "file,git", True),
    ("git", "*", True),
    ("git", "*,!git", False),
    ("git", "!git,*", False),
    ("gitx", "git", False),
    ("git", "g?t", True),
    ("g.t", "g?t", True),
    ("gxt", "g.t", False),      # '.' is literal, not a regex
])
def test_match_pattern_list(value, patterns, expected):
    assert sshsig.match_pattern_list(value, patterns) is expected


def _sig(key_blob=KEY_BLOB, namespace="git"):
    return sshsig.SshSignature(key_blob, namespace, b"", "sha512", b"")


def test_trust_window_and_namespaces():
    signers = sshsig.AllowedSigners.parse(
        f'a@x namespaces="file" {KEY}\n'
        f'b@x valid-before="20200101Z" {KEY}\n'.encode())
    with pytest.raises(KeyValidityError, match="expired"):
        signers.check(_sig(), when=calendar.timegm((2021, 1, 1, 0, 0, 0)), revision="tag v1")
    entry = signers.check(_sig(), when=calendar.timegm((2019, 1, 1, 0, 0, 0)))
    assert entry.principals == "b@x"
    only_file = sshsig.AllowedSigners.parse(f'a@x namespaces="file" {KEY}'.encode())
    with pytest.raises(UntrustedSignatureError, match="namespace 'git'"):
        only_file.check(_sig(), when=0)
    ca_only = sshsig.AllowedSigners.parse(f"a@x cert-authority {KEY}".encode())
    with pytest.raises(UntrustedSignatureError):
        ca_only.check(_sig(), when=0)


def test_ssh_signature_unsupported_and_malformed():
    with pytest.raises(MalformedSignatureError):
        sshsig.parse(b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n")
    with pytest.raises(BadSignatureError, match="namespace 'file'"):
        sshsig.check_signature(_sig(namespace="file"), b"payload")
    cert = struct.pack(">I", 32) + b"ssh-ed25519-cert-v01@openssh.com" + b"\0" * 8
    with pytest.raises(UnsupportedSignatureError, match="certificates"):
        sshsig.check_signature(_sig(key_blob=cert), b"payload")
    odd = sshsig.SshSignature(KEY_BLOB, "git", b"", "md5", b"")
    with pytest.raises(UnsupportedSignatureError, match="hash"):
        sshsig.check_signature(odd, b"payload")


# -- where signatures sit in objects ----------------------------------------------------

COMMIT = (b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
          b"author A <a@x> 1700000000 +0100\n"
          b"committer C <c@x> 1700000100 -0230\n"
          b"\n"
          b"message\n"
          b"gpgsig in the body is not a header\n")


def _signer(payload: bytes) -> bytes:
    return b"-----BEGIN PGP SIGNATURE-----\n\nabc\n=x\n-----END PGP SIGNATURE-----\n"


def test_sign_commit_object_layout():
    signed = sign_commit_object(COMMIT, _signer)
    assert b"committer C <c@x> 1700000100 -0230\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n" \
           b" abc\n =x\n -----END PGP SIGNATURE-----\n\nmessage\n" in signed
    parsed = split_commit(signed)
    assert parsed.payload == COMMIT
    assert parsed.signature == _signer(b"")
    assert parsed.format == "openpgp" and parsed.timestamp == 1700000100
    assert split_commit(COMMIT).signature is None


def test_split_commit_hash_specific_headers():
    signed = sign_commit_object(COMMIT, _signer)
    both = signed.replace(b"gpgsig ", b"gpgsig-sha256 X\n Y\ngpgsig ", 1)
    # The SHA-1 signature is checked; every signature header leaves the payload.
    assert split_commit(both).payload == COMMIT
    assert split_commit(both).signature == _signer(b"")
    assert split_commit(both, "sha256").signature == b"X\nY\n"
    only256 = signed.replace(b"gpgsig ", b"gpgsig-sha256 ", 1)
    assert split_commit(only256).signature is None
    twice = signed.replace(b"\n\nmessage", b"\ngpgsig again\n\nmessage")
    with pytest.raises(MalformedSignatureError, match="2 gpgsig headers"):
        split_commit(twice)


TAG = (b"object 4b825dc642cb6eb9a060e54bf8d69288fbee4904\ntype commit\ntag v1\n"
       b"tagger T <t@x> 1700000200 +0000\n\nrelease\n")


def test_split_tag_takes_the_last_armor_line():
    first = b"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
    second = _signer(b"")
    parsed = split_tag(TAG + first + second)
    assert parsed.payload == TAG + first and parsed.signature == second
    assert parsed.format == "openpgp" and parsed.timestamp == 1700000200
    assert split_tag(TAG).signature is None
    # an armor line must start a line
    assert split_tag(TAG + b"see -----BEGIN PGP SIGNATURE-----\n").signature is None


# -- gpgv status lines ---------------------------------------------------------------

FPR = "A" * 40
PRIMARY = "B" * 40


def _status(*lines: str):
    return openpgp.parse_status("".join(f"[GNUPG:] {line}\n" for line in lines).encode()
                                + b"gpgv: human text ignored\n")


@pytest.mark.parametrize("lines,rc,error", [
    (["NEWSIG", "BADSIG 1111222233334444 Alice"], 1, BadSignatureError),
    (["NEWSIG", "ERRSIG 1111222233334444 22 10 00 1700000000 9 " + FPR,
      "NO_PUBKEY 1111222233334444"], 2, UntrustedSignatureError),
    (["NEWSIG", "ERRSIG 1111222233334444 99 10 00 1700000000 4 -"], 2,
     UnsupportedSignatureError),
    (["NEWSIG", "KEYEXPIRED 1600000000", "EXPKEYSIG 1111222233334444 Old",
      f"VALIDSIG {FPR} 2020-01-01 1577840400 0 4 0 22 10 00 {PRIMARY}"], 0, KeyValidityError),
    (["NEWSIG", "REVKEYSIG 1111222233334444 Old",
      f"VALIDSIG {FPR} 2020-01-01 1577840400 0 4 0 22 10 00 {PRIMARY}"], 0, KeyValidityError),
    (["NEWSIG", "EXPSIG 1111222233334444 Old"], 0, KeyValidityError),
    (["NODATA 4"], 2, MalformedSignatureError),
    ([], 2, MalformedSignatureError),
    (["NEWSIG", "GOODSIG 1111222233334444 A", f"VALIDSIG {FPR} x 1 0 4 0 22 10 00 {PRIMARY}",
      "NEWSIG", "GOODSIG 5555222233334444 B"], 0, MalformedSignatureError),
    # GOODSIG without VALIDSIG, or with a failing exit status, is not believed
    (["NEWSIG", "GOODSIG 1111222233334444 A"], 0, BadSignatureError),
    (["NEWSIG", "GOODSIG 1111222233334444 A",
      f"VALIDSIG {FPR} x 1 0 4 0 22 10 00 {PRIMARY}"], 1, BadSignatureError),
])
def test_gpgv_status_failures(lines, rc, error):
    with pytest.raises(error):
        openpgp.interpret_status(_status(*lines), rc, "tag v1")


def test_gpgv_status_good():
    signer = openpgp.interpret_status(_status(
        "NEWSIG", "GOODSIG 1111222233334444 Alice %3Calice@x%3E%0A",
        f"VALIDSIG {FPR} 2024-01-01 1704067200 0 4 0 22 10 00 {PRIMARY}",
        "TRUST_UNDEFINED 0 pgp"), 0, "tag v1")
    assert signer.fingerprint == PRIMARY and signer.signing_fingerprint == FPR
    assert signer.user_id == "Alice <alice@x>\n" and signer.created == 1704067200


def test_status_lines_only_from_the_status_stream():
    # A user id cannot forge a status line: escaped, and only line starts count.
    status = openpgp.parse_status(b"[GNUPG:] BADSIG 11 x [GNUPG:] GOODSIG 11 y\n"
                                  b"text [GNUPG:] VALIDSIG fake\n")
    assert status == [[b"BADSIG", b"11", b"x", b"[GNUPG:]", b"GOODSIG", b"11", b"y"]]


@pytest.mark.parametrize("bits", [512, 16392])
def test_rsa_key_size_limits(bits):
    def mpint(value: int) -> bytes:
        raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
        return struct.pack(">I", len(raw)) + raw
    n = (1 << (bits - 1)) | 1
    key_blob = struct.pack(">I", 7) + b"ssh-rsa" + mpint(65537) + mpint(n)
    sig = sshsig.SshSignature(key_blob, "git", b"", "sha512",
                              struct.pack(">I", 12) + b"rsa-sha2-512" + struct.pack(">I", 0))
    with pytest.raises(UnsupportedSignatureError, match=f"{bits} bits"):
        sshsig.check_signature(sig, b"payload")
