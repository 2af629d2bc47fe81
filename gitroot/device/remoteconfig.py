"""The optional remote document, and the merge of all three sources of settings.

A fleet operator can steer one device without touching it, as Webconverger
devices are steered: the device fetches a small YAML document (JSON is valid
YAML, so a JSON document works too) from ``remote_config.url`` in the
configuration file::

    fetch-revision: stable          # branch to follow
    update-revision: 3f2a9c1e       # a release to take instead of the branch head, or null
    noupgrade: false                # true: fetch nothing

Every key is optional and ``null`` means "not set".  The device names itself
by its systemd machine id (``/etc/machine-id``): ``{machine_id}`` in the URL
is replaced by it (for static hosting, one file per device), otherwise it is
sent as the query parameter ``machine-id``.

The document is hostile input and optional: an unreachable server, an HTTP
error, a document over the size cap, a download that outlasts the timeout,
invalid YAML, an unknown key or a value of the wrong type each log one
warning and make :func:`fetch_remote_settings` return ``None``, so nothing
changes.  A document is applied whole or not at all.

:func:`effective_settings` merges the kernel command line, the remote
document and the configuration file; the precedence is documented there and
in docs/configuration.md.

Threading: no shared state.  The download runs under an overall deadline
(:mod:`gitroot.device.deadline`, SIGALRM: main thread only); requests' own
timeout applies to each read, so a server dribbling a byte at a time --
body or headers -- could otherwise hold it open for hours.
"""

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from gitroot import __version__
from gitroot.boot.cmdline import BootParams
from gitroot.git.refs import branch_name_problem, revision_problem
from gitroot.device.config import Config, RemoteConfigSource, load_yaml
from gitroot.device.deadline import Deadline, enforced
from gitroot.errors import ConfigError

if TYPE_CHECKING:  # requests is imported only when a document is fetched
    import requests

log = logging.getLogger(__name__)

MACHINE_ID_PATH = "/etc/machine-id"
MACHINE_ID_PLACEHOLDER = "{machine_id}"
MACHINE_ID_PARAMETER = "machine-id"
DOCUMENT_KEYS = ("fetch-revision", "update-revision", "noupgrade")

_MACHINE_ID = re.compile(r"[0-9a-f]{32}")
_CHUNK = 1024
_BROKE_OFF = "the connection broke off in the middle of the document"


@dataclass(frozen=True)
class RemoteSettings:
    """What a remote document says; ``None`` where it says nothing."""

    fetch_revision: Optional[str] = None
    update_revision: Optional[str] = None
    noupgrade: Optional[bool] = None
    url: Optional[str] = None
    """Where the document came from (after redirects), for ``status``."""


class _Ignored(Exception):
    """Why a remote document is ignored (becomes one warning)."""


# -- the document ----------------------------------------------------------

def parse_remote_document(text: str, source: str = "<remote document>") -> RemoteSettings:
    """Parse a remote document; raise :class:`ConfigError` naming *source* if bad.

    Pure.  :func:`fetch_remote_settings` turns the error into a warning.
    """
    data = load_yaml(text, source, ConfigError)
    if data is None:
        return RemoteSettings(url=source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the document must be a mapping of keys, "
                          f"not {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in DOCUMENT_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)} (known: {', '.join(DOCUMENT_KEYS)})")
    branch = _revision(data, "fetch-revision", branch_name_problem, source)
    pin = _revision(data, "update-revision", revision_problem, source)
    noupgrade = data.get("noupgrade")
    if noupgrade is not None and not isinstance(noupgrade, bool):
        raise ConfigError(f"{source}: noupgrade must be true or false, "
                          f"not {type(noupgrade).__name__}")
    return RemoteSettings(fetch_revision=branch, update_revision=pin,
                          noupgrade=noupgrade, url=source)


def _revision(data: Dict[Any, Any], key: str, problem_of: Any, source: str) -> Optional[str]:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        # YAML reads an unquoted 1234 as a number and 12e4 as a float.
        raise ConfigError(f"{source}: {key} must be a string, not "
                          f"{type(value).__name__} (quote it)")
    problem = problem_of(value) if value else "it is empty"
    if problem is not None:
        raise ConfigError(f"{source}: {key} {value!r} is not valid: {problem}")
    return value


# -- the device's name -----------------------------------------------------

def read_machine_id(path: str = MACHINE_ID_PATH) -> Optional[str]:
    """The systemd machine id (32 lowercase hex digits), or ``None`` with a warning."""
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            text = stream.read(64).strip()
    except OSError as err:
        log.warning("no machine id: cannot read %s: %s", path, err.strerror or err)
        return None
    if not _MACHINE_ID.fullmatch(text):
        log.warning("no machine id: %s does not hold 32 hex digits", path)
        return None
    return text


def _document_request(url: str, machine_id: Optional[str]) -> Tuple[str, Dict[str, str]]:
    """The URL and query parameters that fetch this device's document.

    Raises :class:`_Ignored` when the URL needs a machine id and there is none.
    """
    if MACHINE_ID_PLACEHOLDER in url:
        if machine_id is None:
            raise _Ignored(f"the URL needs {MACHINE_ID_PLACEHOLDER} and the machine id is unknown")
        return url.replace(MACHINE_ID_PLACEHOLDER, machine_id), {}
    return url, ({MACHINE_ID_PARAMETER: machine_id} if machine_id else {})


# -- fetching --------------------------------------------------------------

def fetch_remote_settings(source: RemoteConfigSource, *,
                          machine_id: Optional[str] = None,
                          machine_id_path: str = MACHINE_ID_PATH,
                          session: "Optional[requests.Session]" = None,
                          ) -> Optional[RemoteSettings]:
    """Fetch and parse this device's remote document.

    ``None`` when no URL is configured (silently) or when the document is
    unreachable or bad (with one logged warning).  *machine_id* defaults to
    the content of *machine_id_path*.
    """
    return fetch_remote_document(source, machine_id=machine_id,
                                 machine_id_path=machine_id_path, session=session)[0]


def fetch_remote_document(source: RemoteConfigSource, *,
                          machine_id: Optional[str] = None,
                          machine_id_path: str = MACHINE_ID_PATH,
                          session: "Optional[requests.Session]" = None,
                          ) -> Tuple[Optional[RemoteSettings], Optional[str]]:
    """:func:`fetch_remote_settings`, and the one-line reason a document
    was ignored (for the fetch's record), or ``None``."""
    if source.url is None:
        return None, None
    if machine_id is None:
        machine_id = read_machine_id(machine_id_path)
    url = source.url
    try:
        url, params = _document_request(source.url, machine_id)
        deadline = Deadline(source.timeout, f"the remote configuration {url}")
        with enforced(deadline, lambda _: _Ignored(f"it took longer than {source.timeout:g} s")):
            text, final_url = _download(url, params, source, session)
        return parse_remote_document(text, final_url), None
    except (_Ignored, ConfigError) as err:
        log.warning("remote configuration %s ignored, nothing changed: %s", url, err)
        return None, f"remote configuration {url} ignored: {err}"


def _download(url: str, params: Dict[str, str], source: RemoteConfigSource,
              session: "Optional[requests.Session]") -> Tuple[str, str]:
    """The document's text and final URL, within the size cap.  The caller
    enforces the overall deadline (gitroot.device.deadline)."""
    import requests  # only here: status and the boot path never need it

    own_session = session is None
    http = requests.Session() if session is None else session
    try:
        with http.get(url, params=params, stream=True,
                      timeout=(source.timeout, source.timeout),
                      headers={"User-Agent": f"gitroot/{__version__}",
                               "Accept": "application/yaml, application/json, text/plain"},
                      ) as response:
            if response.status_code != 200:
                raise _Ignored(f"HTTP {response.status_code} {response.reason or ''}".rstrip())
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > source.max_bytes:
                raise _Ignored(f"it is {declared} bytes, more than the cap of "
                               f"{source.max_bytes}")
            body = _read_capped(response, source.max_bytes)
            final_url = response.url
            # urllib3 1.26 (Debian 12) ends a body cut short without an error.
            if (declared.isdigit() and len(body) < int(declared)
                    and response.headers.get("Content-Encoding", "identity") == "identity"):
                raise _Ignored(_BROKE_OFF)
    except requests.RequestException as err:
        if isinstance(err, requests.exceptions.ChunkedEncodingError):
            raise _Ignored(_BROKE_OFF) from err  # urllib3 2 says so itself
        raise _Ignored(_request_problem(err, source.timeout)) from err
    finally:
        if own_session:
            http.close()
    try:
        return body.decode("utf-8"), final_url
    except UnicodeDecodeError as err:
        raise _Ignored(f"it is not UTF-8 text (byte {err.start})") from err


def _read_capped(response: "requests.Response", cap: int) -> bytes:
    chunks: List[bytes] = []
    size = 0
    # iter_content decodes gzip, so the cap also bounds a compression bomb.
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > cap:
            raise _Ignored(f"it is more than the cap of {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _request_problem(err: Exception, timeout: float) -> str:
    import requests

    if isinstance(err, requests.Timeout):
        return f"the server did not answer within {timeout:g} s"
    if isinstance(err, requests.ConnectionError):
        return f"cannot connect: {_innermost(err)}"
    return f"the request failed: {_innermost(err)}"


def _innermost(err: BaseException) -> str:
    """The first line of the innermost cause: requests wraps urllib3 wraps OSError."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        wrapped = err.args[0] if err.args else None
        for inner in (err.__cause__, getattr(err, "reason", None), wrapped, err.__context__):
            if isinstance(inner, BaseException):
                err = inner
                break
        else:
            break
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


# -- merging the three sources ---------------------------------------------

@dataclass(frozen=True)
class EffectiveSettings:
    """What this device follows, and which source decided each part."""

    branch: str
    branch_source: str
    """``cmdline``, ``remote`` or ``config`` (which includes its default)."""
    pinned: Optional[str]
    """``update-revision``: from the command line a debug pin the boot path
    boots as is; from the remote document the release a fetch considers
    instead of the branch head, under every rule of a fetch
    (gitroot.device.decide), never holding upgrades."""
    pinned_source: Optional[str]
    noupgrade: bool
    noupgrade_sources: Tuple[str, ...]
    """Every source that said ``noupgrade``; empty when upgrades are allowed."""
    remote_problem: Optional[str] = None
    """Why the remote document was ignored (recorded with the fetch), if it was."""


def effective_settings(config: Config, boot: BootParams,
                       remote: Optional[RemoteSettings]) -> EffectiveSettings:
    """Merge the three sources.  Pure.

    * The branch: kernel command line, else remote document, else the file.
    * The pin: the first source (in that order) that names any revision,
      ``fetch-revision`` or ``update-revision``, decides it.  So a person at
      the console who picks a branch with ``fetch-revision=`` is not
      overridden by a pin in the remote document; only the sources below the
      one that spoke are ignored.
    * ``noupgrade``: true if any source says so; stopping is the safe way
      to err, so any party entitled to speak may stop upgrades.
    """
    remote = remote or RemoteSettings()
    if boot.fetch_revision is not None:
        branch, branch_source = boot.fetch_revision, "cmdline"
    elif remote.fetch_revision is not None:
        branch, branch_source = remote.fetch_revision, "remote"
    else:
        branch, branch_source = config.branch, "config"

    pinned: Optional[str] = None
    pinned_source: Optional[str] = None
    if boot.fetch_revision is not None or boot.update_revision is not None:
        pinned, pinned_source = boot.update_revision, "cmdline"
    elif remote.fetch_revision is not None or remote.update_revision is not None:
        pinned, pinned_source = remote.update_revision, "remote"
    if pinned is None:
        pinned_source = None

    sources = tuple(name for name, said in (("cmdline", boot.noupgrade),
                                            ("remote", remote.noupgrade is True),
                                            ("config", config.noupgrade)) if said)
    return EffectiveSettings(branch=branch, branch_source=branch_source,
                             pinned=pinned, pinned_source=pinned_source,
                             noupgrade=bool(sources), noupgrade_sources=sources)
