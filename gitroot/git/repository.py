"""Opening gitroot's bare repositories and resolving revisions.

Small on purpose: the boot path imports it.  Errors become
:class:`gitroot.errors.RepositoryError` with a one-line message.
"""

import os
import re
from typing import Optional, Tuple

import pygit2

from gitroot.errors import RepositoryError, UsageError

_COMMIT = getattr(pygit2, "GIT_OBJ_COMMIT", None) or pygit2.enums.ObjectType.COMMIT


def open_repo(path: str) -> pygit2.Repository:
    """Open an existing repository (bare or not) at exactly *path*."""
    if not os.path.isdir(path):
        raise RepositoryError(f"{path}: no such repository")
    try:
        # NO_SEARCH: never walk up to a parent's repository by accident.
        flags = getattr(pygit2, "GIT_REPOSITORY_OPEN_NO_SEARCH", 1)
        return pygit2.Repository(path, flags)
    except (pygit2.GitError, KeyError, ValueError) as err:
        raise RepositoryError(f"{path}: not a git repository ({err})") from None


def open_or_init_bare(path: str) -> pygit2.Repository:
    if os.path.exists(path):
        return open_repo(path)
    try:
        return pygit2.init_repository(path, bare=True)
    except pygit2.GitError as err:
        raise RepositoryError(f"{path}: cannot create repository: {err}") from None


def resolve_object(repo: pygit2.Repository, rev: str) -> pygit2.Object:
    """The object named by *rev* (an id or prefix, tag, branch), unpeeled.

    The one resolver: mount, pin, fetch, verify and bundles all name
    revisions through it, so they accept and refuse the same things.
    """
    if not rev or rev.startswith("-") or "\0" in rev:
        raise RepositoryError(f"invalid revision {rev!r}")
    try:
        return repo.revparse_single(rev)
    except (KeyError, ValueError, pygit2.GitError) as err:
        detail = str(err).strip().strip("'")
        detail = "not found" if detail in ("", rev) else detail
        raise RepositoryError(f"unknown revision {rev!r} in {repo.path.rstrip('/')}: "
                              f"{detail}") from None


def resolve_commit(repo: pygit2.Repository, rev: str) -> pygit2.Commit:
    """The commit named by *rev*: a commit id (or prefix), tag, or branch."""
    obj = resolve_object(repo, rev)
    try:
        return obj.peel(_COMMIT)
    except (KeyError, ValueError, pygit2.GitError) as err:
        raise RepositoryError(f"revision {rev!r} in {repo.path.rstrip('/')} is not a "
                              f"commit: {str(err).strip() or 'cannot peel'}") from None


def _date_from_env(role: str) -> Optional[Tuple[int, int]]:
    """GIT_<ROLE>_DATE as git's internal format ``[@]EPOCH [+-HHMM]``
    (what reproducible builds and backdated test releases set)."""
    value = os.environ.get(f"GIT_{role}_DATE")
    if not value:
        return None
    match = re.fullmatch(r"@?(\d{1,12})(?: ([+-])(\d\d)(\d\d))?", value.strip())
    if match is None:
        raise UsageError(f"GIT_{role}_DATE={value!r}: give '@EPOCH +HHMM' (git's internal "
                         "date format)")
    sign, hours, minutes = match.group(2, 3, 4)
    offset = 0 if sign is None else (int(hours) * 60 + int(minutes)) * (-1 if sign == "-" else 1)
    return int(match.group(1)), offset


def default_signature(repo: pygit2.Repository, role: str) -> pygit2.Signature:
    """Author or committer from GIT_<ROLE>_NAME/EMAIL/DATE, git config, or a default."""
    name = os.environ.get(f"GIT_{role}_NAME")
    email = os.environ.get(f"GIT_{role}_EMAIL")
    if not (name and email):
        try:
            config = repo.config
            name = name or config["user.name"]
            email = email or config["user.email"]
        except (KeyError, pygit2.GitError):
            pass
    when = _date_from_env(role)
    if when is not None:
        return pygit2.Signature(name or "gitroot", email or "gitroot@localhost", *when)
    return pygit2.Signature(name or "gitroot", email or "gitroot@localhost")

