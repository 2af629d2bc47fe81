"""Checking the signature on a revision: the decision the fetcher pins on.

:func:`verify_revision` resolves a revision to the signed object (an
annotated tag, else the commit), separates signature from payload on the
exact stored bytes, checks the signature (SSH in-process, OpenPGP through
gpgv), checks the key against the device's trust configuration, and applies
the policy.  It returns a :class:`Verdict` or raises one
:class:`~gitroot.errors.SignatureError` subclass per failure class.

No shared state; one call per check, from any thread (each call reads the
trust files afresh, so a rotated key takes effect at the next check).
"""

import os
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import pygit2

from gitroot.git import objects as go
from gitroot.errors import (MalformedSignatureError, NoSignatureError, RepositoryError,
                            SignatureError, UnsupportedSignatureError,
                            UntrustedSignatureError, UsageError)
from gitroot.git.repository import resolve_object
from gitroot.signing import openpgp, sshsig
from gitroot.signing.channel import BindingError, channels_of_object
from gitroot.signing.objects import SignedPayload, split_commit, split_tag, tag_headers

POLICIES = ("strict", "sloppy", "none")

# Where a device keeps the keys it trusts (see docs/signing.md).
DEVICE_ALLOWED_SIGNERS = "/etc/gitroot/allowed_signers"
DEVICE_KEYRING = "/etc/gitroot/trusted.gpg"


@dataclass(frozen=True)
class TrustConfig:
    """The keys a device trusts.

    *allowed_signers* is an OpenSSH allowed-signers file (trusts SSH keys for
    the ``git`` namespace), *keyring* an OpenPGP keyring (binary or armored
    ``gpg --export``; every key in it is trusted).  Either may be None; a
    signature in a format with no trust file is untrusted.
    """

    allowed_signers: Optional[str] = None
    keyring: Optional[str] = None
    gpgv: Optional[str] = None      # the gpgv program; default: from PATH

    @classmethod
    def device_default(cls) -> "TrustConfig":
        """The device's files under /etc/gitroot, those that exist."""
        return cls(
            allowed_signers=DEVICE_ALLOWED_SIGNERS
            if os.path.exists(DEVICE_ALLOWED_SIGNERS) else None,
            keyring=DEVICE_KEYRING if os.path.exists(DEVICE_KEYRING) else None)


@dataclass
class Verdict:
    """The outcome of :func:`verify_revision` that did not raise.

    ``verified`` is True only for a good signature from a trusted key; it is
    False when the policy let an unsigned (``sloppy``) or unchecked
    (``none``) revision through, and ``warnings`` then says so.
    """

    revision: str                       # as the caller named it
    commit_id: str                      # the commit to pin (hex)
    signed_object_id: Optional[str]     # the tag or commit whose signature was checked
    tag_name: Optional[str]             # the tag object's own name, if REV is a tag
    verified: bool
    policy: str
    format: Optional[str] = None        # "ssh" or "openpgp"
    principal: Optional[str] = None     # allowed-signers principals, or OpenPGP user id
    fingerprint: Optional[str] = None   # SHA256:... (SSH) or hex (OpenPGP primary key)
    signed_at: Optional[int] = None     # tagger/committer time (SSH), signature time (OpenPGP)
    warnings: List[str] = field(default_factory=list)
    #: the channels (branches) the signed message binds the release to
    #: (gitroot.signing.channel); None: no binding, or a malformed one
    channels: Optional[Tuple[str, ...]] = None
    binding_error: Optional[str] = None  # why the binding trailers are malformed

    def summary(self) -> str:
        """One line for logs and ``gitroot status``."""
        if self.verified:
            return f"good {self.format} signature by {self.principal} ({self.fingerprint})"
        return f"not verified (policy {self.policy})"


@dataclass
class _Target:
    """What a revision names: the object to check and the commit to pin."""

    signed: SignedPayload
    object_id: str
    commit_id: str
    tag_name: Optional[str]
    label: str                          # "tag v1 (0123abcd...)" for messages
    warnings: List[str]


def verify_revision(repo: pygit2.Repository, rev: str, trust: TrustConfig,
                    policy: str = "strict") -> Verdict:
    """Check the signature on *rev* in *repo* and return the commit to pin.

    *rev* is a tag name, ``refs/...`` name, branch or object id.  If it names
    an annotated tag, the tag's signature is checked (a tag without one
    falls back to its commit's signature), and the tag must point directly
    at a commit.  Otherwise the commit's own ``gpgsig`` signature is checked.

    Policies:

    ``strict``
        A good signature from a trusted key is required.
    ``sloppy``
        A signature that is present must be good and trusted; a revision
        with no signature at all passes with a warning.
    ``none``
        Nothing is checked; the verdict always carries a warning.

    Raises :class:`~gitroot.errors.RepositoryError` when *rev* does not
    resolve to a commit, :class:`~gitroot.errors.UsageError` for a bad
    policy or unreadable trust file, and otherwise one of
    ``NoSignatureError``, ``BadSignatureError``, ``UntrustedSignatureError``,
    ``KeyValidityError``, ``MalformedSignatureError`` and
    ``UnsupportedSignatureError`` (all :class:`~gitroot.errors.SignatureError`;
    their messages name the revision and, where known, the key fingerprint).

    Only the signature is checked here; whether the commit is newer than the
    one already pinned (downgrade protection) is the caller's business, and
    ``integrity.verify_commit_objects`` checks the objects under it.
    """
    if policy not in POLICIES:
        raise UsageError(f"unknown signature policy {policy!r} (expected one of "
                         f"{', '.join(POLICIES)})")
    target = _resolve(repo, rev)
    verdict = Verdict(revision=rev, commit_id=target.commit_id,
                      signed_object_id=target.object_id, tag_name=target.tag_name,
                      verified=False, policy=policy, warnings=list(target.warnings))
    try:
        # From the signed bytes themselves: what the signature covers.
        verdict.channels = channels_of_object(target.signed.payload)
    except BindingError as err:
        verdict.binding_error = f"{target.label}: {err}"
    if policy == "none":
        verdict.signed_object_id = None
        verdict.warnings.append(f"{target.label}: signature NOT checked (policy none)")
        return verdict
    if trust.allowed_signers is None and trust.keyring is None:
        raise UsageError("no trusted keys: give an allowed-signers file or an OpenPGP "
                         "keyring (or policy none)")
    signed = target.signed
    if signed.signature is None:
        err = NoSignatureError(f"{target.label}: not signed", target.label)
        if policy == "sloppy":
            verdict.warnings.append(f"{err} (allowed by policy sloppy)")
            return verdict
        raise err
    _check(signed, target.label, trust, verdict)
    verdict.verified = True
    return verdict


def _resolve(repo: pygit2.Repository, rev: str) -> _Target:
    obj = resolve_object(repo, rev)
    object_id = str(obj.id)
    type_num, raw = repo.odb.read(obj.id)[:2]
    type_num = int(type_num)
    sha = "sha1" if len(object_id) == 40 else "sha256"
    warnings: List[str] = []
    if type_num == go.OBJ_COMMIT:
        label = f"commit {object_id}"
        if rev != object_id:
            label = f"{rev} (commit {object_id})"
        return _Target(split_commit(raw, sha), object_id, object_id, None, label, warnings)
    if type_num != go.OBJ_TAG:
        raise RepositoryError(f"{rev} names a {go.TYPE_NAMES.get(type_num, b'?').decode()}, "
                              "not a commit or tag")
    headers = tag_headers(raw)
    tag_name = headers.get(b"tag", b"").decode("utf-8", "replace") or None
    target_hex = headers.get(b"object", b"").decode("ascii", "replace")
    label = f"tag {tag_name or rev} ({object_id})"
    if headers.get(b"type") != b"commit":
        raise RepositoryError(f"{label} points to a "
                              f"{headers.get(b'type', b'?').decode('utf-8', 'replace')}, "
                              "not a commit")
    ref_tag = rev[len("refs/tags/"):] if rev.startswith("refs/tags/") else rev
    if tag_name and ref_tag != tag_name and ref_tag != object_id \
            and _is_tag_ref(repo, ref_tag):
        # The tag name is inside the signed bytes, the ref name is not: a
        # server can present the signed tag "v1" as "v2".
        warnings.append(f"ref {rev} points to a tag object named {tag_name!r}")
    try:
        commit_type = int(repo.odb.read(pygit2.Oid(hex=target_hex))[0])
    except (KeyError, ValueError, pygit2.GitError):
        raise RepositoryError(f"{label} points to {target_hex}, which is missing") from None
    if commit_type != go.OBJ_COMMIT:
        raise RepositoryError(f"{label} claims a commit but {target_hex} is not one")
    signed = split_tag(raw)
    if signed.signature is None:
        commit_raw = repo.odb.read(pygit2.Oid(hex=target_hex))[1]
        commit_signed = split_commit(commit_raw, sha)
        if commit_signed.signature is not None:
            warnings.append(f"{label} is not signed; checking the signature of commit "
                            f"{target_hex} instead")
            return _Target(commit_signed, target_hex, target_hex, tag_name,
                           f"commit {target_hex} (from unsigned {label})", warnings)
    return _Target(signed, object_id, target_hex, tag_name, label, warnings)


def _is_tag_ref(repo: pygit2.Repository, name: str) -> bool:
    try:
        repo.references[f"refs/tags/{name}"]
        return True
    except (KeyError, ValueError, pygit2.GitError):
        return False


def _check(signed: SignedPayload, label: str, trust: TrustConfig, verdict: Verdict) -> None:
    """Fill *verdict* from a good, trusted signature, or raise."""
    assert signed.signature is not None
    verdict.format = signed.format
    try:
        if signed.format == "ssh":
            _check_ssh(signed, label, trust, verdict)
        elif signed.format == "openpgp":
            _check_openpgp(signed, label, trust, verdict)
        elif signed.format == "x509":
            raise UnsupportedSignatureError(f"{label}: X.509 (gpgsm) signatures are not "
                                            "supported", label)
        else:
            raise MalformedSignatureError(f"{label}: signature block is in no known "
                                          "format", label)
    except SignatureError as err:
        if not err.revision:
            # Low-level checks do not know the revision; name it here.
            raise type(err)(f"{label}: {err}", label, err.fingerprint) from None
        raise


def _check_ssh(signed: SignedPayload, label: str, trust: TrustConfig,
               verdict: Verdict) -> None:
    assert signed.signature is not None
    sig = sshsig.parse(signed.signature)
    verdict.fingerprint = sig.fingerprint
    sshsig.check_signature(sig, signed.payload)
    if trust.allowed_signers is None:
        raise UntrustedSignatureError(f"{label}: signed by SSH key {sig.fingerprint}, but "
                                      "no allowed-signers file is configured",
                                      label, sig.fingerprint)
    signers = sshsig.AllowedSigners.load(trust.allowed_signers)
    # Like git, judge the key's validity window at the signed tagger/committer
    # time, so releases signed before a key was retired stay valid.
    when = signed.timestamp if signed.timestamp is not None else int(time.time())
    entry = signers.check(sig, when, revision=label)
    verdict.principal = entry.principals
    verdict.signed_at = signed.timestamp


def _check_openpgp(signed: SignedPayload, label: str, trust: TrustConfig,
                   verdict: Verdict) -> None:
    assert signed.signature is not None
    if trust.keyring is None:
        raise UntrustedSignatureError(f"{label}: OpenPGP signature, but no trusted "
                                      "keyring is configured", label)
    signer = openpgp.verify(signed.signature, signed.payload, trust.keyring, label,
                            trust.gpgv)
    verdict.fingerprint = signer.fingerprint
    verdict.principal = signer.user_id
    verdict.signed_at = signer.created
