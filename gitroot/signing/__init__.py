"""Signed releases: making and checking SSH and OpenPGP signatures on git objects.

The fetcher calls :func:`verify_revision` before it pins anything::

    from gitroot.signing import TrustConfig, verify_revision

    verdict = verify_revision(repo, "refs/tags/v42",
                              TrustConfig(allowed_signers="/etc/gitroot/allowed_signers",
                                          keyring="/etc/gitroot/trusted.gpg"),
                              policy="strict")
    pin(verdict.commit_id)

and, to be sure of every byte under that commit,
``verify_commit_objects(repo, verdict.commit_id)``.

Publishers use :func:`make_signer` (a payload -> armored signature function
for the importer's ``signer=``), :func:`create_signed_tag` and
:func:`sign_commit_object`.

Modules: ``sshsig`` (SSHSIG + allowed-signers, in-process with
``cryptography``), ``openpgp`` (gpgv + status lines), ``objects`` (where the
signature sits in tag and commit bytes), ``sign`` (ssh-keygen / gpg),
``verify`` (policy and verdict), ``integrity`` (``verify --full``), ``tag``.
This package is never imported on the boot path.
"""

from gitroot.signing.integrity import verify_commit_objects
from gitroot.signing.objects import sign_commit_object, split_commit, split_tag
from gitroot.signing.sign import make_signer
from gitroot.signing.tag import create_signed_tag
from gitroot.signing.verify import POLICIES, TrustConfig, Verdict, verify_revision

__all__ = ["POLICIES", "TrustConfig", "Verdict", "create_signed_tag", "make_signer",
           "sign_commit_object", "split_commit", "split_tag", "verify_commit_objects",
           "verify_revision"]
