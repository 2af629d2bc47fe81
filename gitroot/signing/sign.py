"""Making signatures: ``ssh-keygen -Y sign -n git`` and ``gpg --detach-sign``.

This is the publisher's side and runs the same programs git runs for
``git tag -s`` / ``git commit -S``, so what gitroot signs verifies with
plain git.  Each signature is one short-lived subprocess; safe from any
thread.
"""

import os
import re
import shutil
import subprocess
from typing import Optional

from gitroot.errors import SigningError, UsageError
from gitroot.signing import sshsig
from gitroot.signing.objects import Signer
from gitroot.signing.openpgp import ARMOR_BEGIN as PGP_BEGIN, ARMOR_END as PGP_END

FORMATS = ("ssh", "openpgp")
SIGN_TIMEOUT = 300  # a passphrase prompt or a hardware token may be slow


def guess_format(key: str) -> str:
    """``ssh`` for an SSH key file, else ``openpgp`` (a key id or fingerprint)."""
    if os.path.isfile(key):
        with open(key, "rb") as f:
            head = f.read(64)
        if head.startswith((b"-----BEGIN OPENSSH PRIVATE KEY-----", b"ssh-", b"ecdsa-",
                            b"sk-", b"-----BEGIN RSA PRIVATE KEY-----",
                            b"-----BEGIN EC PRIVATE KEY-----",
                            b"-----BEGIN PRIVATE KEY-----")):
            return "ssh"
        raise UsageError(f"{key}: not an SSH key file; give an OpenPGP key id or "
                         "fingerprint, or --sign-format")
    return "openpgp"


def make_signer(key: str, fmt: Optional[str] = None,
                gnupg_home: Optional[str] = None) -> Signer:
    """A function that returns the ASCII-armored signature of a payload.

    *key* is an SSH private key file (or its ``.pub`` with the private key in
    ssh-agent) for ``fmt="ssh"``, or an OpenPGP key id, fingerprint or user
    id for ``fmt="openpgp"``; with *fmt* None the format is guessed from
    *key*.  *gnupg_home* selects a GnuPG home directory (default: gpg's own,
    i.e. ``$GNUPGHOME`` or ``~/.gnupg``).  The signer raises
    :class:`~gitroot.errors.SigningError` when the tool fails.
    """
    fmt = fmt or guess_format(key)
    if fmt == "ssh":
        if not os.path.isfile(key):
            raise UsageError(f"SSH signing key {key}: no such file")
        program = shutil.which("ssh-keygen")
        if program is None:
            raise UsageError("cannot make SSH signatures: ssh-keygen is not installed "
                             "(Debian package openssh-client)")
        return lambda payload: _sign_ssh(program, os.path.abspath(key), payload)
    if fmt == "openpgp":
        if not key or key.startswith("-"):
            raise UsageError(f"invalid OpenPGP key id {key!r}")
        program = shutil.which("gpg")
        if program is None:
            raise UsageError("cannot make OpenPGP signatures: gpg is not installed "
                             "(Debian package gnupg)")
        return lambda payload: _sign_openpgp(program, key, gnupg_home, payload)
    raise UsageError(f"unknown signature format {fmt!r} (expected one of "
                     f"{', '.join(FORMATS)})")


def _run(argv, payload: bytes, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=payload, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=SIGN_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SigningError(f"{what}: {err}") from None


def _tool_message(stderr: bytes) -> str:
    text = [line for line in stderr.decode("utf-8", "replace").strip().splitlines()
            if not line.startswith("[GNUPG:]")]
    return text[-1] if text else "no message"


def _sign_ssh(program: str, key: str, payload: bytes) -> bytes:
    # With no file argument ssh-keygen signs standard input to standard output.
    proc = _run([program, "-Y", "sign", "-n", sshsig.GIT_NAMESPACE, "-f", key], payload,
                f"ssh-keygen -Y sign with {key}")
    if proc.returncode != 0:
        raise SigningError(f"ssh-keygen could not sign with {key}: "
                           f"{_tool_message(proc.stderr)}")
    signature = proc.stdout
    sshsig.parse(signature)     # refuse to embed something that is not a signature
    return signature if signature.endswith(b"\n") else signature + b"\n"


def _sign_openpgp(program: str, key: str, gnupg_home: Optional[str],
                  payload: bytes) -> bytes:
    argv = [program, "--batch", "--no-tty", "--status-fd", "2"]
    if gnupg_home:
        argv += ["--homedir", gnupg_home]
    argv += ["--local-user", key, "--detach-sign", "--armor"]
    proc = _run(argv, payload, f"gpg --detach-sign with key {key}")
    created = re.search(rb"^\[GNUPG:\] SIG_CREATED ", proc.stderr, re.MULTILINE)
    if proc.returncode != 0 or created is None:
        raise SigningError(f"gpg could not sign with key {key}: "
                           f"{_tool_message(proc.stderr)}")
    signature = proc.stdout.replace(b"\r\n", b"\n")
    if not signature.startswith(PGP_BEGIN) or PGP_END not in signature:
        raise SigningError(f"gpg with key {key} did not produce an armored signature")
    return signature
