"""Names git gives things: ref and branch names, revisions, object ids.

Pure checks with git-check-ref-format(1)'s rules, used by every room (the
kernel command line, the configuration, the importer, bundles, the fetcher)
so a name is judged the same way everywhere.  Standard library only: the
boot path uses it.
"""

import re
from typing import Optional

_HEX_ID = re.compile(r"[0-9a-fA-F]{4,64}")
_FULL_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def is_full_object_id(rev: str) -> bool:
    """True for a whole lower-case SHA-1 or SHA-256 id, nothing shorter."""
    return isinstance(rev, str) and _FULL_ID.fullmatch(rev) is not None


def control_char_problem(text: str) -> Optional[str]:
    """Why *text* cannot be a value at all: control characters, non-UTF-8."""
    for char in text:
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            return f"it holds the control character {char!r}"
        if 0xDC80 <= code <= 0xDCFF:
            return "it holds bytes that are not UTF-8"
    return None


def _bad_char(text: str) -> Optional[str]:
    """Why *text* cannot be in a ref name, character by character."""
    problem = control_char_problem(text)
    if problem is not None:
        return problem
    for char in text:
        if char in " ~^:?*[\\":
            return f"it holds {char!r}"
    return None


def ref_name_problem(name: str) -> Optional[str]:
    """Why *name* is not a valid git ref name, or ``None`` if it is.

    The rules of git-check-ref-format(1), with ``--allow-onelevel`` (so
    ``main`` is fine) and without ``--normalize``.
    """
    if not name:
        return "it is empty"
    bad = _bad_char(name)
    if bad is not None:
        return bad
    if name == "@":
        return "it is '@'"
    if name.startswith("/") or name.endswith("/"):
        return "it begins or ends with '/'"
    if "//" in name:
        return "it holds '//'"
    if ".." in name:
        return "it holds '..'"
    if "@{" in name:
        return "it holds '@{'"
    if name.endswith("."):
        return "it ends with '.'"
    for component in name.split("/"):
        if component.startswith("."):
            return f"component {component!r} begins with '.'"
        if component.endswith(".lock"):
            return f"component {component!r} ends with '.lock'"
    return None


def branch_name_problem(name: str) -> Optional[str]:
    """Why *name* is not a branch name (``git check-ref-format --branch``)."""
    if name.startswith("-"):
        return "it begins with '-'"
    if name == "HEAD":
        return "'HEAD' is not a branch name"
    if name.startswith("refs/"):
        return "give the branch name without 'refs/...' (e.g. 'main')"
    return ref_name_problem(name)


def revision_problem(rev: str) -> Optional[str]:
    """Why *rev* is neither a hex object id (4-64 digits) nor a ref name."""
    if _HEX_ID.fullmatch(rev):
        return None
    if rev.startswith("-"):
        return "it begins with '-'"
    problem = ref_name_problem(rev)
    if problem is not None:
        return f"it is not a hex object id (4-64 digits) and not a ref name: {problem}"
    return None


def is_object_id(rev: str) -> bool:
    """True if *rev* has the shape of an (abbreviated) hex object id."""
    return _HEX_ID.fullmatch(rev) is not None
