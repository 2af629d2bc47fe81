"""The kernel command line: which release to follow, pin or skip at boot.

:func:`parse_cmdline` is a pure function from the text of ``/proc/cmdline``
to a :class:`BootParams` record: an absent option is ``None``, a malformed
one raises :class:`~gitroot.errors.CmdlineError` naming it.  Options that are
not gitroot's (``root=``, ``quiet``, ``xfetch-revision=``) are ignored.

Recognised options (see docs/configuration.md):

``fetch-revision=BRANCH``
    the branch this device follows (a git branch name).
``update-revision=REV``
    a debug pin: boot and keep this revision (hex object id of 4-64
    characters, or a ref name) instead of following the branch.
``noupgrade``
    a flag: fetch nothing and keep the current release.
``gitroot.KEY=VALUE``
    namespaced options, all kept in :attr:`BootParams.options`; the known
    keys (``repo``, ``root``, ``rootfstype``, ``rootflags``, ``config``,
    ``commit``) are
    checked and also exposed as fields.  Unknown ``gitroot.*`` keys are kept
    but are not errors, so that an older release booted by rollback still
    boots under a bootloader entry written for a newer one.

Words are split exactly as the kernel's ``next_arg()`` (lib/cmdline.c)
splits them: double quotes group words and are removed, a bare ``--`` ends
the kernel's parameters (what follows is init's argv and is ignored here).
When an option is repeated, the last one wins, as it does for the kernel's
own parameters: a bootloader appends the operator's additions after the
defaults.

The initramfs imports this module, so it uses the standard library only.
It holds no state and is safe to use from any thread.
"""

import os
import logging
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple

from gitroot.errors import CmdlineError
from gitroot.git.refs import (branch_name_problem, control_char_problem, is_full_object_id,
                              revision_problem)

DEFAULT_PATH = "/proc/cmdline"
ENV_OVERRIDE = "GITROOT_CMDLINE"
NAMESPACE = "gitroot."

# The kernel's isspace() for ASCII: space, \t, \n, \v, \f, \r.
_KERNEL_SPACE = frozenset(" \t\n\v\f\r")

_FSTYPE = re.compile(r"[a-z0-9][a-z0-9_.+-]*")
_DEVICE_TAGS = ("UUID=", "PARTUUID=", "LABEL=", "PARTLABEL=")


@dataclass(frozen=True)
class BootParams:
    """What the kernel command line says to gitroot."""

    fetch_revision: Optional[str] = None
    """Branch to follow (``fetch-revision=``)."""
    update_revision: Optional[str] = None
    """Debug pin (``update-revision=``): object id or ref name."""
    noupgrade: bool = False
    """``noupgrade`` was given: fetch nothing."""
    repo: Optional[str] = None
    """``gitroot.repo=``: absolute path of the bare repository on the medium."""
    root: Optional[str] = None
    """``gitroot.root=``: the device holding the medium (``/dev/...``, ``UUID=...``)."""
    rootfstype: Optional[str] = None
    """``gitroot.rootfstype=``: filesystem type of that device."""
    rootflags: Optional[str] = None
    """``gitroot.rootflags=``: mount options for that device."""
    config: Optional[str] = None
    """``gitroot.config=``: absolute path of the configuration file."""
    commit: Optional[str] = None
    """``gitroot.commit=``: the release a boot loader entry was written for
    (a full hex commit id); the initramfs mounts exactly this commit."""
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Every ``gitroot.KEY=VALUE``, keyed by KEY without the prefix."""

    @property
    def unknown_options(self) -> Tuple[str, ...]:
        """``gitroot.*`` keys this version does not know (:func:`warn_unknown`
        logs them: a typo such as ``gitroot.brnach=`` must not pass silently)."""
        return tuple(sorted(k for k in self.options if k not in _NAMESPACED))


def split_cmdline(text: str) -> Iterator[Tuple[str, Optional[str]]]:
    """Yield ``(param, value)`` per word, as the kernel's ``next_arg()`` does.

    *value* is ``None`` for a word without ``=``.  Stops at a bare ``--``.
    """
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _KERNEL_SPACE:
            pos += 1
        if pos >= end:
            return
        quoted = text[pos] == '"'
        if quoted:
            pos += 1
        in_quote = quoted
        start = i = pos
        equals = None
        while i < end:
            char = text[i]
            if char in _KERNEL_SPACE and not in_quote:
                break
            # The kernel keeps "equals == 0" as "not found", so an "=" as the
            # very first character does not split the word.
            if equals is None and char == "=" and i > start:
                equals = i
            if char == '"':
                in_quote = not in_quote
            i += 1
        word, pos = text[start:i], i
        param, value = _split_word(word, quoted, None if equals is None else equals - start)
        if value is None and param == "--":
            return
        yield param, value


def _split_word(word: str, quoted: bool, equals: Optional[int]) -> Tuple[str, Optional[str]]:
    """The quote removal of ``next_arg()`` on one word (without its opening quote)."""
    last_is_quote = word.endswith('"')
    if equals is None:
        if quoted and last_is_quote:
            word = word[:-1]
        return word, None
    param, start, stop = word[:equals], equals + 1, len(word)
    if word[start:start + 1] == '"':
        start += 1
        if last_is_quote:
            stop -= 1
            last_is_quote = False  # the kernel has already cut that quote
    if quoted and last_is_quote:
        stop -= 1
    return param, word[start:max(start, stop)]


def parse_cmdline(text: str) -> BootParams:
    """Parse the kernel command line *text* into :class:`BootParams`.

    Raises :class:`CmdlineError` for a malformed gitroot option; other
    options are ignored whatever they hold.
    """
    found: Dict[str, Optional[str]] = {}
    noupgrade = False
    options: Dict[str, str] = {}
    for param, value in split_cmdline(text):
        if param == "noupgrade":
            if value is not None:
                raise CmdlineError(
                    f"noupgrade takes no value (got noupgrade={value!r}); "
                    "write just noupgrade, or leave it out")
            noupgrade = True
        elif param in _TOP_LEVEL:
            found[param] = _checked(param, value, _TOP_LEVEL[param])
        elif param.startswith(NAMESPACE):
            key = param[len(NAMESPACE):]
            if not key:
                raise CmdlineError(f"{param!r} names no option: write gitroot.KEY=VALUE")
            check = _NAMESPACED.get(key)
            if check is not None:
                options[key] = _checked(param, value, check)
            else:
                # Unknown key: kept for a newer reader, but still needs "=".
                if value is None:
                    raise CmdlineError(f"{param} needs a value: {param}=VALUE")
                options[key] = value
    return BootParams(
        fetch_revision=found.get("fetch-revision"),
        update_revision=found.get("update-revision"),
        noupgrade=noupgrade,
        repo=options.get("repo"),
        root=options.get("root"),
        rootfstype=options.get("rootfstype"),
        rootflags=options.get("rootflags"),
        config=options.get("config"),
        commit=options.get("commit"),
        options=MappingProxyType(options),
    )


def read_cmdline(path: str = DEFAULT_PATH,
                 environ: Optional[Mapping[str, str]] = None) -> BootParams:
    """Parse ``$GITROOT_CMDLINE`` if it is set (even empty), else the file *path*.

    The variable lets tests and unusual boots inject a command line, as
    live-boot does.  Bytes that are not UTF-8 are kept as surrogates, so they
    upset only a gitroot option that holds them.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_OVERRIDE)
    if text is None:
        try:
            with open(path, "rb") as stream:
                text = stream.read().decode("utf-8", "surrogateescape")
        except OSError as err:
            raise CmdlineError(f"cannot read the kernel command line {path}: "
                               f"{err.strerror or err}") from err
    return parse_cmdline(text)


# -- validators ----------------------------------------------------------

def _absolute_path_problem(path: str) -> Optional[str]:
    if not path.startswith("/"):
        return "it is not an absolute path"
    bad = control_char_problem(path)
    if bad is not None:
        return bad
    if ".." in path.split("/"):
        return "it holds a '..' component"
    return None


def _device_problem(device: str) -> Optional[str]:
    for tag in _DEVICE_TAGS:
        if device.startswith(tag):
            rest = device[len(tag):]
            if not rest or control_char_problem(rest) is not None:
                return f"the {tag[:-1]} is empty or holds control characters"
            return None
    if device.startswith("/dev/") and len(device) > len("/dev/"):
        return _absolute_path_problem(device)
    return "it is neither /dev/NAME nor UUID=, PARTUUID=, LABEL= or PARTLABEL="


def _full_commit_problem(commit: str) -> Optional[str]:
    if is_full_object_id(commit):
        return None
    return "it is not a full commit id (40 or 64 lowercase hex digits)"


def _fstype_problem(fstype: str) -> Optional[str]:
    return None if _FSTYPE.fullmatch(fstype) else "it is not a filesystem type name"


def _flags_problem(flags: str) -> Optional[str]:
    return control_char_problem(flags)


def _persist_problem(value: str) -> Optional[str]:
    return None if value in ("on", "off") else "it is neither on nor off"


_Problem = Callable[[str], Optional[str]]

# option -> (what the value should be, for messages; validator)
_TOP_LEVEL: Dict[str, Tuple[str, _Problem]] = {
    "fetch-revision": ("BRANCH", branch_name_problem),
    "update-revision": ("REV", revision_problem),
}
_NAMESPACED: Dict[str, Tuple[str, _Problem]] = {
    "repo": ("PATH", _absolute_path_problem),
    "root": ("DEVICE", _device_problem),
    "rootfstype": ("TYPE", _fstype_problem),
    "rootflags": ("OPTIONS", _flags_problem),
    "config": ("PATH", _absolute_path_problem),
    "commit": ("COMMIT", _full_commit_problem),
    "persist": ("on|off", _persist_problem),    # off: a kiosk (gitroot.boot.persist)
}


def _checked(param: str, value: Optional[str], check: Tuple[str, _Problem]) -> str:
    what, problem_of = check
    if value is None:
        raise CmdlineError(f"{param} needs a value: {param}={what}")
    if value == "":
        raise CmdlineError(f"{param}= is empty: write {param}={what} or leave it out")
    problem = problem_of(value)
    if problem is not None:
        raise CmdlineError(f"{param}={value!r} is not a valid {what}: {problem}")
    return value


def warn_unknown(params: BootParams, log: logging.Logger) -> None:
    """One warning per ``gitroot.*`` option this version does not know."""
    for key in params.unknown_options:
        log.warning("unknown kernel command line option %s= ignored (a typo?)", key)
