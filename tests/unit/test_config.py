"""The configuration file: defaults, every key, and the errors that name keys."""

import os

import pytest

from gitroot.boot.cmdline import parse_cmdline
from gitroot.device.config import (DEFAULT_PATH, Config, RemoteConfigSource, TrustedKeys,
                            config_path, load_config, parse_config, parse_duration)
from gitroot.errors import ConfigError, UsageError

FULL = """\
remotes:
  - https://updates.example.com/git/root.git
  - file:///srv/mirror/root.git
  - /media/usb/root.git
branch: stable/2024
repository: /gitroot/repo.git
state_dir: /gitroot/state
boot_dir: /gitroot/boot
trusted_keys:
  allowed_signers: /etc/gitroot/allowed_signers
  keyring: /etc/gitroot/keyring.gpg
signature_policy: sloppy
tries: 5
max_signature_age: 30d
noupgrade: false
remote_config:
  url: https://config.example.com/devices/{machine_id}.yml
  timeout: 2.5
  max_bytes: 4096
"""


def test_full_file():
    config = parse_config(FULL, "/etc/gitroot/gitroot.yml")
    assert config == Config(
        remotes=("https://updates.example.com/git/root.git", "file:///srv/mirror/root.git",
                 "/media/usb/root.git"),
        branch="stable/2024",
        repository="/gitroot/repo.git",
        state_dir="/gitroot/state",
        boot_dir="/gitroot/boot",
        trusted_keys=TrustedKeys("/etc/gitroot/allowed_signers", "/etc/gitroot/keyring.gpg"),
        signature_policy="sloppy",
        tries=5,
        max_signature_age=30 * 86400,
        noupgrade=False,
        remote_config=RemoteConfigSource(
            "https://config.example.com/devices/{machine_id}.yml", 2.5, 4096),
        path="/etc/gitroot/gitroot.yml",
    )


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file_gives_defaults(text):
    config = parse_config(text, "f.yml")
    assert config == Config(path="f.yml")
    assert config.signature_policy == "strict"
    assert config.tries == 3
    assert config.state_dir == "/var/lib/gitroot/state"
    assert config.remote_config.max_bytes == 65536


# YAML -> (attribute path, expected value)
GOOD = [
    ("repository: /data/r.git", ("state_dir", "/data/state")),  # state next to the repo
    ("repository: /r.git", ("state_dir", "/state")),
    ("repository: /data/r.git/", ("state_dir", "/data/state")),
    ("tries: 1", ("tries", 1)),
    ("max_signature_age: 3600", ("max_signature_age", 3600)),
    ("max_signature_age: 90m", ("max_signature_age", 5400)),
    ("max_signature_age: '2w'", ("max_signature_age", 14 * 86400)),
    ("max_signature_age: null", ("max_signature_age", None)),
    ("signature_policy: none", ("signature_policy", "none")),
    ("noupgrade: true", ("noupgrade", True)),
    ("branch: 'yes'", ("branch", "yes")),
    ("branch: '1.10'", ("branch", "1.10")),
    ("remote_config: {timeout: 3}", ("remote_config.timeout", 3.0)),
    ("remote_config: {}", ("remote_config.url", None)),
    ("trusted_keys:", ("trusted_keys", TrustedKeys())),
    ("remotes: []", ("remotes", ())),
    ("remotes: [http://127.0.0.1:8080/git/r.git]", ("remotes", ("http://127.0.0.1:8080/git/r.git",))),
]


@pytest.mark.parametrize("text,expected", GOOD, ids=[t for t, _ in GOOD])
def test_good_values(text, expected):
    attribute, value = expected
    got = parse_config(text, "f.yml")
    for name in attribute.split("."):
        got = getattr(got, name)
    assert got == value


# YAML -> words the message must hold (the file name is checked for all)
BAD = [
    ("remote: https://x/r.git", ["unknown key remote"]),
    ("Branch: main", ["unknown key Branch"]),
    ("tries: 3\nfoo: 1\nbar: 2", ["unknown keys bar, foo"]),
    ("trusted_keys: {keyrng: /k.gpg}", ["unknown key trusted_keys.keyrng"]),
    ("remote_config: {uri: https://x}", ["unknown key remote_config.uri"]),
    ("1: x", ["unknown key 1"]),
    ("- a\n- b", ["top level must be a mapping", "a list"]),
    ("just a string", ["top level must be a mapping", "a string"]),
    ("remotes: https://x/r.git", ["remotes", "must be a list"]),
    ("remotes: [42]", ["remotes[0]", "must be a URL", "an integer"]),
    ("remotes: ['']", ["remotes[0]", "must be a URL"]),
    ("remotes: [ssh://host/r.git]", ["remotes[0]", "not an http://"]),
    ("remotes: [relative/r.git]", ["remotes[0]"]),
    ("branch: yes", ["branch", "must be a string", "a boolean", "quote it"]),
    ("branch: 1.10", ["branch", "a number"]),
    ("branch: 0123", ["branch", "an integer"]),
    ("branch: ''", ["branch", "must not be empty"]),
    ("branch: a..b", ["branch", "not a branch name", "'..'"]),
    ("branch: -x", ["branch", "begins with '-'"]),
    ("branch: refs/heads/main", ["branch", "refs/"]),
    ("branch: [main]", ["branch", "a list"]),
    ("repository: repo.git", ["repository", "absolute path"]),
    ("repository: \"/a\\nb\"", ["repository", "control character"]),
    ("state_dir: state", ["state_dir", "absolute path"]),
    ("boot_dir: 7", ["boot_dir", "must be a string"]),
    ("trusted_keys: /etc/keys", ["trusted_keys", "must be a mapping"]),
    ("trusted_keys: {keyring: keyring.gpg}", ["trusted_keys.keyring", "absolute path"]),
    ("signature_policy: lax", ["signature_policy", "strict, sloppy, none", "'lax'"]),
    ("signature_policy: Strict", ["signature_policy"]),
    ("signature_policy: false", ["signature_policy", "a boolean"]),
    ("tries: 0", ["tries", "at least 1"]),
    ("tries: -2", ["tries", "at least 1"]),
    ("tries: 2.5", ["tries", "must be an integer", "a number"]),
    ("tries: '3'", ["tries", "must be an integer", "a string"]),
    ("tries: true", ["tries", "must be an integer", "a boolean"]),
    ("max_signature_age: 0", ["max_signature_age", "more than 0"]),
    ("max_signature_age: 30 days", ["max_signature_age", "'30 days'"]),
    ("max_signature_age: 30y", ["max_signature_age"]),
    ("max_signature_age: true", ["max_signature_age", "a boolean"]),
    ("max_signature_age: 1.5", ["max_signature_age"]),
    ("noupgrade: 1", ["noupgrade", "true or false"]),
    ("noupgrade: 'true'", ["noupgrade", "true or false"]),
    ("remote_config: https://x", ["remote_config", "must be a mapping"]),
    ("remote_config: {url: ftp://x/c.yml}", ["remote_config.url", "http://"]),
    ("remote_config: {url: file:///etc/c.yml}", ["remote_config.url"]),
    ("remote_config: {timeout: 0}", ["remote_config.timeout", "more than 0"]),
    ("remote_config: {timeout: .inf}", ["remote_config.timeout"]),
    ("remote_config: {timeout: '5'}", ["remote_config.timeout", "a string"]),
    ("remote_config: {max_bytes: 0}", ["remote_config.max_bytes", "at least 1"]),
    ("remote_config: {max_bytes: 64k}", ["remote_config.max_bytes", "a string"]),
    # YAML itself
    ("branch: main\nbranch: testing", ["duplicate key 'branch'", "line 2"]),
    ("trusted_keys:\n  keyring: /a\n  keyring: /b", ["duplicate key 'keyring'"]),
    ("branch: [main", ["not valid YAML", "line"]),
    ("a: b: c", ["not valid YAML"]),
    ("branch: !!python/object:os.system x", ["not valid YAML"]),
    ("\tbranch: main", ["not valid YAML"]),
]


@pytest.mark.parametrize("text,words", BAD, ids=[t for t, _ in BAD])
def test_bad_values(text, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "/etc/gitroot/gitroot.yml")
    message = str(caught.value)
    assert message.startswith("/etc/gitroot/gitroot.yml: ")
    assert "\n" not in message
    for word in words:
        assert word in message


def test_merge_keys_are_not_duplicates():
    text = "remote_config: &rc {timeout: 2}\n"
    assert parse_config(text).remote_config.timeout == 2.0


@pytest.mark.parametrize("value,seconds", [
    (1, 1), (60, 60), ("45", 45), ("45s", 45), ("5m", 300), ("12h", 43200), ("30d", 2592000),
    ("2w", 1209600), (" 7d ", 604800),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [0, -1, "0d", "", "d", "1.5d", "1y", True, None, 1.5, [1]])
def test_parse_duration_bad(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_config_error_is_a_usage_error():
    assert issubclass(ConfigError, UsageError) and ConfigError.exit_code == 2


# -- require_fetchable ---------------------------------------------------

@pytest.mark.parametrize("text,words", [
    ("{}", ["no remotes"]),
    ("remotes: [https://x/r.git]", ["strict", "neither allowed_signers nor keyring"]),
    ("remotes: [https://x/r.git]\nsignature_policy: sloppy", ["sloppy"]),
    ("remotes: [https://x/r.git]\nsignature_policy: none", None),
    ("remotes: [https://x/r.git]\ntrusted_keys: {keyring: /k.gpg}", None),
    ("remotes: [https://x/r.git]\ntrusted_keys: {allowed_signers: /a}", None),
])
def test_require_fetchable(text, words):
    config = parse_config(text, "c.yml")
    if words is None:
        config.require_fetchable()
        return
    with pytest.raises(ConfigError) as caught:
        config.require_fetchable()
    for word in words:
        assert word in str(caught.value)


# -- finding the file ----------------------------------------------------

def test_config_path_order():
    boot = parse_cmdline("gitroot.config=/boot.yml")
    env = {"GITROOT_CONFIG": "/env.yml"}
    assert config_path("/cli.yml", env, boot) == ("/cli.yml", True)
    assert config_path(None, env, boot) == ("/env.yml", True)
    assert config_path(None, {}, boot) == ("/boot.yml", True)
    assert config_path(None, {}, parse_cmdline("")) == (DEFAULT_PATH, False)
    assert config_path(None, {"GITROOT_CONFIG": ""}, None) == (DEFAULT_PATH, False)


def test_load_from_file(tmp_path):
    path = tmp_path / "gitroot.yml"
    path.write_text("branch: testing\n")
    config = load_config(str(path), environ={})
    assert (config.branch, config.path) == ("testing", str(path))


def test_load_from_env(tmp_path, monkeypatch):
    path = tmp_path / "gitroot.yml"
    path.write_text("tries: 7\n")
    monkeypatch.setenv("GITROOT_CONFIG", str(path))
    assert load_config().tries == 7


def test_missing_default_file_gives_defaults(monkeypatch):
    monkeypatch.delenv("GITROOT_CONFIG", raising=False)
    if os.path.exists(DEFAULT_PATH):
        pytest.skip(f"{DEFAULT_PATH} exists on this machine")
    assert load_config() == Config()


@pytest.mark.parametrize("how", ["cli", "env", "cmdline"])
def test_missing_explicit_file_is_an_error(tmp_path, how):
    missing = str(tmp_path / "nope.yml")
    kwargs = {"cli": dict(cli_path=missing, environ={}),
              "env": dict(environ={"GITROOT_CONFIG": missing}),
              "cmdline": dict(environ={}, boot=parse_cmdline(f"gitroot.config={missing}"))}[how]
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(**kwargs)


def test_unreadable_and_undecodable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(str(tmp_path), environ={})  # a directory
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"branch: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path), environ={})


def test_error_names_the_file(tmp_path):
    path = tmp_path / "gitroot.yml"
    path.write_text("tries: many\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert str(caught.value).startswith(f"{path}: tries: ")
