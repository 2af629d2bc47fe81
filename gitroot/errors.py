"""The gitroot error hierarchy.

Every failure a user can meet is a :class:`GitrootError` subclass carrying a
one-line message and an exit code.  Library code raises these; only
``gitroot.cli.main`` turns them into a line on stderr and an exit status.
"""


class GitrootError(Exception):
    """Base class: ``str(err)`` is the user-facing message."""

    exit_code = 1


class UsageError(GitrootError):
    """The command line or a configuration value is wrong."""

    exit_code = 2


class RepositoryError(GitrootError):
    """The repository is missing, unreadable, or a revision does not resolve."""

    exit_code = 3


class ManifestError(GitrootError):
    """A manifest is malformed or disagrees with its tree."""

    exit_code = 4


class SourceError(GitrootError):
    """A source tree holds something gitroot cannot represent or read."""

    exit_code = 5


class MountError(GitrootError):
    """The FUSE mount could not be set up."""

    exit_code = 6


class CorruptObjectError(GitrootError):
    """An object is missing from the store or does not hash to its id."""

    exit_code = 7


class StateError(GitrootError):
    """The device's state (state.json, its lock, its refs) cannot be read or written."""

    exit_code = 8


class MissingToolError(GitrootError):
    """A program gitroot runs (git, gpgv, ssh-keygen, zstd) is not installed."""

    exit_code = 11


class PublishError(GitrootError):
    """Writing a release, a bundle or an index failed (disk, permissions)."""

    exit_code = 12


class PersistError(GitrootError):
    """The device's persistent data (its /etc per release, the persistence
    directory, the release's persistence file) cannot be read or written."""

    exit_code = 14


class MigrationError(GitrootError):
    """A data migration could not run or failed; the release is not marked good."""

    exit_code = 15


class CmdlineError(UsageError):
    """The kernel command line holds a malformed gitroot option."""


class ConfigError(UsageError):
    """The configuration file is unreadable, malformed, or holds a bad value."""


# -- signatures (gitroot.signing) -------------------------------------------
# Each failure class of a signature check has its own exit code, so a script
# (or the fetcher's log) can tell "nobody signed this" from "someone tampered
# with it" from "a stranger signed it".


class SignatureError(GitrootError):
    """A signature check failed.  *revision* and *fingerprint* name what and whom."""

    exit_code = 20

    def __init__(self, message: str, revision: str = "", fingerprint: str = ""):
        super().__init__(message)
        self.revision = revision
        self.fingerprint = fingerprint


class NoSignatureError(SignatureError):
    """The revision carries no signature at all."""

    exit_code = 21


class BadSignatureError(SignatureError):
    """The signature does not match the signed bytes (content or signature altered)."""

    exit_code = 22


class UntrustedSignatureError(SignatureError):
    """A good signature, but from a key that is not trusted for this purpose."""

    exit_code = 23


class KeyValidityError(SignatureError):
    """A good signature from a trusted key outside its validity (expired, revoked,
    or not yet valid)."""

    exit_code = 24


class MalformedSignatureError(SignatureError):
    """The signature block cannot be parsed (truncated, garbled, not a signature)."""

    exit_code = 25


class UnsupportedSignatureError(SignatureError):
    """A well-formed signature of a kind gitroot does not check (key type,
    hash algorithm, certificate, x509)."""

    exit_code = 26


class SigningError(GitrootError):
    """Making a signature failed (missing key, ssh-keygen or gpg refused)."""

    exit_code = 27


class FetchError(GitrootError):
    """A fetch failed (network, server, disk); nothing was pinned."""

    exit_code = 9


class RefusedReleaseError(GitrootError):
    """A fetched release was refused (signature, downgrade, age); nothing was pinned."""

    exit_code = 10


class InternalError(GitrootError):
    """Not a gitroot error at all: a defect, or an input no check foresaw.
    ``cli.main`` words it as one line and this exit code."""

    exit_code = 70


#: Every exit status gitroot uses.  docs/operations.md carries the same
#: table, and tests/unit/test_errors.py keeps both in step with the classes.
EXIT_CODES = {
    0: "success (a fetch: pinned, up to date, held, abandoned or skipped)",
    1: "an error of no more specific kind",
    2: "usage: the command line, a configuration value or the kernel command line is wrong",
    3: "repository: missing or unreadable, or a revision that does not resolve",
    4: "manifest: malformed, or it disagrees with its tree",
    5: "source tree: something gitroot cannot represent or read (gitroot commit)",
    6: "mount: FUSE could not be set up",
    7: "corrupt object: missing from the store or not hashing to its id",
    8: "state: state.json, its locks or its refs cannot be read or written",
    9: "fetch failed (network, server, disk, deadline); nothing was pinned",
    10: "release refused (downgrade, age, channel); nothing was pinned",
    11: "a program gitroot runs (git, gpgv, ssh-keygen) is not installed",
    12: "publishing: a bundle or an index could not be written",
    14: "persistent data: the /etc merge or the persistence directory failed",
    15: "a data migration failed, or could not run (the release is not marked good)",
    20: "signature check failed (generic)",
    21: "no signature",
    22: "bad signature (content or signature altered)",
    23: "good signature from an untrusted key",
    24: "good signature from a trusted key outside its validity",
    25: "malformed signature",
    26: "unsupported signature kind",
    27: "making a signature failed",
    70: "internal error: a defect (run with --debug for the traceback and report it)",
    130: "interrupted (SIGINT)",
}
