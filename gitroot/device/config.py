"""The device's configuration file, ``/etc/gitroot/gitroot.yml``.

:func:`load_config` finds the file (``--config``, then ``$GITROOT_CONFIG``,
then ``gitroot.config=`` on the kernel command line, then the default path),
reads it with a PyYAML safe loader that also refuses duplicate keys, and
returns a frozen :class:`Config`.  :func:`parse_config` is the pure part:
text in, :class:`Config` out.  Every unknown key and every value of the wrong
type or range is a :class:`~gitroot.errors.ConfigError` that names the file
and the key (``trusted_keys.keyring``), so a typo never silently falls back
to a default.

A missing file at the *default* path is not an error: the defaults describe
a device that boots and can answer ``status`` but has no remote, and
:meth:`Config.require_fetchable` says so the moment a fetch needs one.  A
missing file that was named explicitly (option, variable or kernel command
line) is an error, because someone meant a file that is not there.

The key reference, with types and defaults, is docs/configuration.md.
Nothing here holds state; everything is safe to use from any thread.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

from gitroot.boot.cmdline import BootParams
from gitroot.git.refs import branch_name_problem
from gitroot.errors import ConfigError

DEFAULT_PATH = "/etc/gitroot/gitroot.yml"
ENV_PATH = "GITROOT_CONFIG"

SIGNATURE_POLICIES = ("strict", "sloppy", "none")
REMOTE_SCHEMES = ("http://", "https://", "file://")
BOOT_LOADERS = ("none", "grub", "systemd-boot")

_DURATION = re.compile(r"([0-9]+)\s*([smhdw]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class TrustedKeys:
    """Where the keys live that a release must be signed with."""

    allowed_signers: Optional[str] = None
    """SSH allowed-signers file, in git's ``gpg.ssh.allowedSignersFile`` format."""
    keyring: Optional[str] = None
    """OpenPGP keyring (for ``gpgv``); never the user's own keyring."""

    def trust_config(self):
        """The signing package's :class:`TrustConfig` for these keys (the one
        place the configuration's keys become what a check trusts)."""
        from gitroot.signing.verify import TrustConfig
        return TrustConfig(allowed_signers=self.allowed_signers, keyring=self.keyring)


@dataclass(frozen=True)
class RemoteConfigSource:
    """Where to fetch the optional per-device remote document (see remoteconfig)."""

    url: Optional[str] = None
    """http(s) URL; ``{machine_id}`` in it is replaced by the device's machine id."""
    timeout: float = 10.0
    """Seconds for connecting, for each read, and for the whole download."""
    max_bytes: int = 64 * 1024
    """A larger document is refused."""


@dataclass(frozen=True)
class BootLoaderSettings:
    """Which boot loader starts a release's kernel, and with what command line."""

    type: str = "none"
    """``grub``, ``systemd-boot`` or ``none`` (the kernel is chosen some other
    way, e.g. QEMU ``-kernel``; the initramfs counts the tries alone)."""
    cmdline: str = ""
    """Kernel command line of every entry; ``gitroot.commit=SHA`` is added."""


@dataclass(frozen=True)
class Config:
    """The effective content of the configuration file, defaults filled in."""

    remotes: Tuple[str, ...] = ()
    """Where releases come from, tried in order: http(s)://, file:// or a path."""
    branch: str = "main"
    """The branch to follow unless the command line or remote document says otherwise."""
    repository: str = "/var/lib/gitroot/repo.git"
    """The bare repository on the persistent medium."""
    state_dir: str = "/var/lib/gitroot/state"
    """Pins, tries and fetch results; defaults to ``state`` next to the repository."""
    boot_dir: str = "/boot"
    """Where the kernel and initrd of a pinned release are installed: where the
    boot loader reads them (the medium's ``boot`` or the ESP), never the overlay."""
    bootloader: BootLoaderSettings = field(default_factory=BootLoaderSettings)
    trusted_keys: TrustedKeys = field(default_factory=TrustedKeys)
    signature_policy: str = "strict"
    """``strict``, ``sloppy`` or ``none``: see docs/signing.md."""
    tries: int = 3
    """Boots a new release gets to be marked good before it is abandoned."""
    max_signature_age: Optional[int] = None
    """Seconds; a release signed longer ago is refused (a frozen server)."""
    noupgrade: bool = False
    """Never fetch (an image that must stay as it is)."""
    fetch_timeout: int = 2 * 3600
    """Seconds one fetch's transfer may take in all (index, bundles, git fetch)."""
    remote_config: RemoteConfigSource = field(default_factory=RemoteConfigSource)
    path: Optional[str] = None
    """The file this came from; ``None`` when no file was read."""

    def require_fetchable(self) -> None:
        """Raise :class:`ConfigError` unless a fetch has what it needs."""
        where = self.path or f"{DEFAULT_PATH} (not present)"
        if not self.remotes:
            raise ConfigError(f"{where}: no remotes configured: nothing to fetch from")
        self.require_trust()

    def require_trust(self) -> None:
        """Raise :class:`ConfigError` unless the policy has keys to check with."""
        where = self.path or f"{DEFAULT_PATH} (not present)"
        keys = self.trusted_keys
        if self.signature_policy != "none" and not (keys.allowed_signers or keys.keyring):
            raise ConfigError(
                f"{where}: signature_policy is {self.signature_policy} but "
                "trusted_keys names neither allowed_signers nor keyring")


# -- finding and reading the file ----------------------------------------

def config_path(cli_path: Optional[str] = None,
                environ: Optional[Mapping[str, str]] = None,
                boot: Optional[BootParams] = None) -> Tuple[str, bool]:
    """The file to read and whether it was named explicitly.

    Order: *cli_path* (``--config``), ``$GITROOT_CONFIG``, ``gitroot.config=``
    from *boot*, then :data:`DEFAULT_PATH`.  The most specific wins: a person
    typing ``--config`` means that file for that one command.
    """
    environ = os.environ if environ is None else environ
    for candidate in (cli_path, environ.get(ENV_PATH), boot.config if boot else None):
        if candidate:
            return candidate, True
    return DEFAULT_PATH, False


def load_config(cli_path: Optional[str] = None,
                environ: Optional[Mapping[str, str]] = None,
                boot: Optional[BootParams] = None) -> Config:
    """Find, read and check the configuration file (see :func:`config_path`)."""
    path, explicit = config_path(cli_path, environ, boot)
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError as err:
        if explicit:
            raise ConfigError(f"configuration file {path} does not exist") from err
        return Config()
    except OSError as err:
        raise ConfigError(f"cannot read configuration file {path}: "
                          f"{err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from err
    return parse_config(text, path)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse the YAML *text*; *source* names it in error messages.

    An empty document gives the defaults.  Pure: reads no file.
    """
    data = load_yaml(text, source, ConfigError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, "
                          f"not {_type_name(data)}")
    return _config_from(data, source)


# -- a safe YAML loader that refuses duplicate keys ------------------------

class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    Plain safe_load keeps the last of two equal keys without a word; in a
    configuration that hides a mistake (two ``branch:`` lines).
    """


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                              deep: bool = False) -> Dict[Any, Any]:
    seen = set()
    for key_node, _value in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable: construct_mapping below reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_unique_mapping)


def load_yaml(text: str, source: str, error: type = ConfigError) -> Any:
    """``yaml.safe_load`` of *text* that also refuses duplicate keys.

    A syntax error becomes *error* naming *source* and the line.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise error(f"{source}: not valid YAML: {problem}{where}") from err
    except RecursionError:
        # 40 KB of '[' exhaust the composer's stack: a bad document like any other
        raise error(f"{source}: not valid YAML: nested too deeply") from None


# -- checking values -------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


class _Reader:
    """Takes keys out of one mapping of the file, checking each one."""

    def __init__(self, data: Dict[Any, Any], source: str, prefix: str = "") -> None:
        self.data = dict(data)
        self.source = source
        self.prefix = prefix

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.prefix}{key}: {message}")

    def take(self, key: str) -> Any:
        return self.data.pop(key, None)

    def string(self, key: str, default: Optional[str]) -> Optional[str]:
        value = self.take(key)
        if value is None:
            return default
        if not isinstance(value, str):
            hint = " (quote it)" if isinstance(value, (bool, int, float)) else ""
            raise self.fail(key, f"must be a string, not {_type_name(value)}{hint}")
        if not value:
            raise self.fail(key, "must not be empty (leave the key out for the default)")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise self.fail(key, "holds a control character")
        return value

    def path(self, key: str, default: Optional[str]) -> Optional[str]:
        value = self.string(key, default)
        if value is not None and not value.startswith("/"):
            raise self.fail(key, f"must be an absolute path, not {value!r}")
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {_type_name(value)}")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}, not {value}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number of seconds, not {_type_name(value)}")
        if not 0 < value < float("inf"):
            raise self.fail(key, f"must be more than 0, not {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_type_name(value)}")
        return value

    def section(self, key: str) -> "_Reader":
        value = self.take(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, not {_type_name(value)}")
        return _Reader(value, self.source, f"{self.prefix}{key}.")

    def finish(self) -> None:
        if self.data:
            names = ", ".join(sorted(f"{self.prefix}{k}" for k in map(str, self.data)))
            raise ConfigError(f"{self.source}: unknown key{'s' if len(self.data) > 1 else ''}"
                              f" {names} (see docs/configuration.md)")


def parse_duration(value: Any) -> int:
    """Seconds from an integer or a string such as ``"90s"``, ``"12h"``, ``"30d"``, ``"2w"``.

    Raises ``ValueError`` with the reason.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be seconds or a duration such as '30d', not {_type_name(value)}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        number, unit = _DURATION.fullmatch(value.strip()).groups()  # type: ignore[union-attr]
        seconds = int(number) * _DURATION_UNITS[unit]
    else:
        raise ValueError(f"must be seconds or a duration such as '30d' "
                         f"(units s, m, h, d, w), not {value!r}")
    if seconds <= 0:
        raise ValueError(f"must be more than 0 seconds, not {value!r}")
    return seconds


def _config_from(data: Dict[Any, Any], source: str) -> Config:
    top = _Reader(data, source)
    remotes = _remotes(top)
    branch = top.string("branch", Config.branch)
    assert branch is not None
    problem = branch_name_problem(branch)
    if problem is not None:
        raise top.fail("branch", f"{branch!r} is not a branch name: {problem}")

    repository = top.path("repository", Config.repository)
    assert repository is not None
    default_state = os.path.join(os.path.dirname(repository.rstrip("/")) or "/", "state")
    state_dir = top.path("state_dir", default_state)
    boot_dir = top.path("boot_dir", Config.boot_dir)

    keys = top.section("trusted_keys")
    trusted_keys = TrustedKeys(allowed_signers=keys.path("allowed_signers", None),
                               keyring=keys.path("keyring", None))
    keys.finish()

    policy = top.string("signature_policy", Config.signature_policy)
    if policy not in SIGNATURE_POLICIES:
        raise top.fail("signature_policy",
                       f"must be one of {', '.join(SIGNATURE_POLICIES)}, not {policy!r}")
    tries = top.integer("tries", Config.tries, minimum=1)
    age_value = top.take("max_signature_age")
    try:
        max_age = None if age_value is None else parse_duration(age_value)
    except ValueError as err:
        raise top.fail("max_signature_age", str(err)) from None
    noupgrade = top.boolean("noupgrade", Config.noupgrade)

    bootloader = _bootloader(top.section("bootloader"))
    timeout_value = top.take("fetch_timeout")
    try:
        fetch_timeout = Config.fetch_timeout if timeout_value is None \
            else parse_duration(timeout_value)
    except ValueError as err:
        raise top.fail("fetch_timeout", str(err)) from None
    remote_config = _remote_config(top.section("remote_config"))
    top.finish()

    return Config(remotes=remotes, branch=branch, repository=repository,
                  state_dir=state_dir or default_state, boot_dir=boot_dir or Config.boot_dir,
                  bootloader=bootloader,
                  trusted_keys=trusted_keys, signature_policy=policy or "strict",
                  tries=tries, max_signature_age=max_age, noupgrade=noupgrade,
                  fetch_timeout=fetch_timeout, remote_config=remote_config, path=source)


def _remotes(top: "_Reader") -> Tuple[str, ...]:
    value = top.take("remotes")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise top.fail("remotes", f"must be a list of URLs, not {_type_name(value)}"
                       " (write it as '- URL' lines)")
    for index, url in enumerate(value):
        if not isinstance(url, str) or not url:
            raise top.fail(f"remotes[{index}]", f"must be a URL, not {_type_name(url)}")
        if not (url.startswith(REMOTE_SCHEMES) or url.startswith("/")):
            raise top.fail(f"remotes[{index}]",
                           f"{url!r} is not an http://, https://, file:// URL "
                           "or an absolute path")
    return tuple(value)


def _bootloader(loader: "_Reader") -> BootLoaderSettings:
    loader_type = loader.string("type", BootLoaderSettings.type)
    if loader_type not in BOOT_LOADERS:
        raise loader.fail("type", f"must be one of {', '.join(BOOT_LOADERS)}, "
                          f"not {loader_type!r}")
    cmdline = loader.take("cmdline")
    if cmdline is None:
        cmdline = ""
    elif not isinstance(cmdline, str):
        raise loader.fail("cmdline", f"must be a string, not {_type_name(cmdline)}")
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in cmdline):
        raise loader.fail("cmdline", "holds a control character")
    elif "gitroot.commit=" in cmdline:
        raise loader.fail("cmdline", "must not name gitroot.commit= (each entry adds its own)")
    loader.finish()
    return BootLoaderSettings(type=loader_type or "none", cmdline=cmdline)


def _remote_config(remote: "_Reader") -> RemoteConfigSource:
    url = remote.string("url", None)
    if url is not None and not url.startswith(("http://", "https://")):
        raise remote.fail("url", f"must be an http:// or https:// URL, not {url!r}")
    source = RemoteConfigSource(
        url=url,
        timeout=remote.number("timeout", RemoteConfigSource.timeout),
        max_bytes=remote.integer("max_bytes", RemoteConfigSource.max_bytes, minimum=1),
    )
    remote.finish()
    return source
