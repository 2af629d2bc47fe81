"""Signed annotated tags written byte for byte.

The tag object text is built here (as ``git tag -s`` writes it), the
payload signed, the armored signature appended, and the object written
with ``odb.write`` so that what is stored is exactly what was signed.
Single-threaded per call.
"""

from typing import Optional

import pygit2

from gitroot.git import objects as go
from gitroot.errors import RepositoryError, SigningError
from gitroot.git.repository import default_signature, resolve_commit
from gitroot.signing.objects import Signer, format_tag, signature_format, split_tag


def _ident(sig: pygit2.Signature) -> bytes:
    offset = sig.offset
    sign = "-" if offset < 0 else "+"
    offset = abs(offset)
    return ("%s <%s> %d %s%02d%02d" % (sig.name, sig.email, sig.time, sign,
                                       offset // 60, offset % 60)).encode("utf-8")


def create_signed_tag(repo: pygit2.Repository, name: str, rev: str, signer: Signer,
                      message: Optional[str] = None, force: bool = False) -> str:
    """Create ``refs/tags/NAME`` -> a new signed tag of the commit *rev*.

    The tagger is GIT_COMMITTER_NAME/EMAIL or the repository's user, at the
    current time.  Returns the tag object's id.  Refuses to replace an
    existing tag unless *force*.
    """
    ref_name = f"refs/tags/{name}"
    if not name or not pygit2.reference_is_valid_name(ref_name):
        raise RepositoryError(f"invalid tag name {name!r}")
    if not force:
        try:
            repo.references[ref_name]
            raise RepositoryError(f"tag {name} already exists (use --force to replace it)")
        except KeyError:
            pass
    commit = resolve_commit(repo, rev)
    if message is None:
        message = name
    tagger = _ident(default_signature(repo, "COMMITTER"))
    payload = format_tag(str(commit.id), "commit", name, tagger, message.encode("utf-8"))
    signature = signer(payload)
    if not signature.endswith(b"\n"):
        signature += b"\n"
    raw = payload + signature
    # The signature must be found again exactly where git will look for it.
    again = split_tag(raw)
    if again.payload != payload or again.signature != signature \
            or signature_format(signature) is None:
        raise SigningError(f"signature for tag {name} is not a recognisable armored block")
    oid = repo.odb.write(go.OBJ_TAG, raw)
    repo.create_reference_direct(ref_name, oid, force)
    return str(oid)
