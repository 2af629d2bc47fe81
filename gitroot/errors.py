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


class CmdlineError(UsageError):
    """The kernel command line holds a malformed gitroot option."""


class ConfigError(UsageError):
    """The configuration file is unreadable, malformed, or holds a bad value."""
