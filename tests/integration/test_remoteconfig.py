"""The remote document against a real HTTP server on 127.0.0.1, and the merge.

The server is Python's http.server in a thread, started by each test: it
answers from a table of path -> reply, and records what it was asked.
"""

import http.server
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import pytest

from gitroot.boot.cmdline import BootParams, parse_cmdline
from gitroot.device.config import Config, RemoteConfigSource
from gitroot.errors import ConfigError
from gitroot.device.remoteconfig import (EffectiveSettings, RemoteSettings, effective_settings,
                                  fetch_remote_settings, parse_remote_document,
                                  read_machine_id)

MACHINE_ID = "0123456789abcdef0123456789abcdef"
SHA1 = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    delay: float = 0.0            # before the status line
    drip: Optional[float] = None  # seconds between single bytes of the body
    length: Optional[int] = None  # Content-Length to claim (default: the truth)
    redirect: Optional[str] = None


class DocumentServer:
    """http.server on 127.0.0.1 answering from ``routes``; records requests."""

    def __init__(self) -> None:
        self.routes: Dict[str, Reply] = {}
        self.requests: List[Tuple[str, Dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, dict(self.headers)))
                reply = server.routes.get(self.path.split("?")[0], Reply(b"not here", 404))
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    if reply.redirect:
                        self.send_header("Location", reply.redirect)
                    length = len(reply.body) if reply.length is None else reply.length
                    if reply.length is not None:
                        self.close_connection = True  # a lie about the length ends here
                    self.send_header("Content-Length", str(length))
                    self.send_header("Content-Type", "application/yaml")
                    self.end_headers()
                    if reply.drip is None:
                        self.wfile.write(reply.body)
                        return
                    for index in range(len(reply.body)):
                        self.wfile.write(reply.body[index:index + 1])
                        self.wfile.flush()
                        time.sleep(reply.drip)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "DocumentServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with DocumentServer() as running:
        yield running


def fetch(server, path, caplog, **source):
    source.setdefault("timeout", 5.0)
    with caplog.at_level(logging.WARNING, logger="gitroot.device.remoteconfig"):
        caplog.clear()
        return fetch_remote_settings(RemoteConfigSource(url=server.url(path), **source),
                                     machine_id=MACHINE_ID)


# path -> (reply, source options, expected settings or None, words in the warning)
GOOD_DOC = b"fetch-revision: testing\nupdate-revision: '" + SHA1.encode() + b"'\nnoupgrade: false\n"
CASES = {
    "good": (Reply(GOOD_DOC), {},
             RemoteSettings("testing", SHA1, False), None),
    "json": (Reply(b'{"fetch-revision": "stable", "noupgrade": true}'), {},
             RemoteSettings("stable", None, True), None),
    "empty": (Reply(b""), {}, RemoteSettings(), None),
    "nulls": (Reply(b"fetch-revision: null\nupdate-revision: ~\nnoupgrade:\n"), {},
              RemoteSettings(), None),
    "exactly-cap": (Reply(b"noupgrade: true" + b" " * 49), {"max_bytes": 64},
                    RemoteSettings(noupgrade=True), None),
    "oversize": (Reply(b"# pad\n" * 20000), {}, None, ["more than the cap of 65536"]),
    "oversize-undeclared": (Reply(b"noupgrade: true\n" + b"#" * 200, length=0), {"max_bytes": 100},
                            # claims 0 bytes, so the client reads nothing: still valid
                            RemoteSettings(), None),
    "oversize-lying": (Reply(b"#" * 300, length=300), {"max_bytes": 100},
                       None, ["300 bytes, more than the cap of 100"]),
    "truncated": (Reply(b"fetch-revision: stable\n", length=100), {}, None, ["broke off"]),
    "slow": (Reply(GOOD_DOC, delay=2.0), {"timeout": 0.5}, None, ["0.5 s"]),
    "dribble": (Reply(b"#" * 1000 + GOOD_DOC, drip=0.05), {"timeout": 1.0},
                None, ["took longer than 1 s"]),
    "invalid-yaml": (Reply(b"fetch-revision: [stable\n"), {}, None, ["not valid YAML"]),
    "duplicate": (Reply(b"noupgrade: true\nnoupgrade: false\n"), {}, None,
                  ["duplicate key 'noupgrade'"]),
    "not-mapping": (Reply(b"- stable\n"), {}, None, ["must be a mapping"]),
    "unknown-key": (Reply(b"fetch-revison: stable\nnoupgrade: true\n"), {}, None,
                    ["unknown key fetch-revison"]),
    "number-rev": (Reply(b"update-revision: 1234\n"), {}, None, ["update-revision", "quote it"]),
    "float-rev": (Reply(b"update-revision: 1234.5\n"), {}, None, ["update-revision", "float"]),
    "bool-branch": (Reply(b"fetch-revision: yes\n"), {}, None, ["fetch-revision", "bool"]),
    "bad-branch": (Reply(b"fetch-revision: 'a..b'\n"), {}, None, ["fetch-revision", "'..'"]),
    "empty-branch": (Reply(b"fetch-revision: ''\n"), {}, None, ["fetch-revision", "empty"]),
    "bad-rev": (Reply(b"update-revision: HEAD~1\n"), {}, None, ["update-revision", "'~'"]),
    "string-noupgrade": (Reply(b"noupgrade: 'yes'\n"), {}, None, ["noupgrade", "true or false"]),
    "latin1": (Reply(b"fetch-revision: caf\xe9\n"), {}, None, ["not UTF-8"]),
    "python-tag": (Reply(b"noupgrade: !!python/object/apply:os.system ['true']\n"), {},
                   None, ["not valid YAML"]),
    "404": (Reply(b"nope", 404), {}, None, ["HTTP 404"]),
    "500": (Reply(b"oops", 500), {}, None, ["HTTP 500"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fetch(server, caplog, name):
    reply, options, expected, words = CASES[name]
    server.routes[f"/{name}"] = reply
    started = time.monotonic()
    got = fetch(server, f"/{name}", caplog, **options)
    elapsed = time.monotonic() - started
    if expected is None:
        assert got is None
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "ignored, nothing changed" in warnings[0]
        for word in words:
            assert word in warnings[0]
    else:
        assert got == RemoteSettings(expected.fetch_revision, expected.update_revision,
                                     expected.noupgrade, url=server.url(f"/{name}?machine-id={MACHINE_ID}"))
        assert not caplog.records
    # a slow server costs about the timeout, not the whole dribble
    assert elapsed < options.get("timeout", 5.0) + 1.5


def test_connection_refused(caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nobody listens
    with caplog.at_level(logging.WARNING, logger="gitroot.device.remoteconfig"):
        got = fetch_remote_settings(
            RemoteConfigSource(url=f"http://127.0.0.1:{port}/c.yml", timeout=2),
            machine_id=MACHINE_ID)
    assert got is None
    assert "cannot connect" in caplog.text
    assert "refused" in caplog.text.lower()


def test_machine_id_in_query(server, caplog):
    server.routes["/c.yml"] = Reply(b"noupgrade: true\n")
    assert fetch(server, "/c.yml", caplog).noupgrade is True
    path, headers = server.requests[-1]
    assert path == f"/c.yml?machine-id={MACHINE_ID}"
    assert headers["User-Agent"].startswith("gitroot/")


def test_machine_id_in_path(server, caplog):
    server.routes[f"/devices/{MACHINE_ID}.yml"] = Reply(b"fetch-revision: canary\n")
    got = fetch(server, "/devices/{machine_id}.yml", caplog)
    assert got.fetch_revision == "canary"
    assert server.requests[-1][0] == f"/devices/{MACHINE_ID}.yml"


def test_machine_id_from_file(server, caplog, tmp_path):
    (tmp_path / "machine-id").write_text(MACHINE_ID + "\n")
    server.routes["/c.yml"] = Reply(b"")
    fetch_remote_settings(RemoteConfigSource(url=server.url("/c.yml"), timeout=5),
                          machine_id_path=str(tmp_path / "machine-id"))
    assert server.requests[-1][0] == f"/c.yml?machine-id={MACHINE_ID}"


def test_no_machine_id(server, caplog, tmp_path):
    server.routes["/c.yml"] = Reply(b"noupgrade: true\n")
    with caplog.at_level(logging.WARNING, logger="gitroot.device.remoteconfig"):
        got = fetch_remote_settings(RemoteConfigSource(url=server.url("/c.yml"), timeout=5),
                                    machine_id_path=str(tmp_path / "missing"))
    assert got.noupgrade is True  # asked without naming itself
    assert server.requests[-1][0] == "/c.yml"
    assert "no machine id" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gitroot.device.remoteconfig"):
        got = fetch_remote_settings(
            RemoteConfigSource(url=server.url("/{machine_id}.yml"), timeout=5),
            machine_id_path=str(tmp_path / "missing"))
    assert got is None
    assert "machine id is unknown" in caplog.text


def test_redirect_is_followed(server, caplog):
    server.routes["/old.yml"] = Reply(b"", 302, redirect=server.url("/new.yml"))
    server.routes["/new.yml"] = Reply(b"fetch-revision: moved\n")
    got = fetch(server, "/old.yml", caplog)
    assert got.fetch_revision == "moved"
    assert got.url.startswith(server.url("/new.yml"))


def test_no_url_configured_is_silent(caplog):
    with caplog.at_level(logging.DEBUG, logger="gitroot.device.remoteconfig"):
        assert fetch_remote_settings(RemoteConfigSource(url=None)) is None
    assert not caplog.records


@pytest.mark.parametrize("content,expected", [
    (MACHINE_ID + "\n", MACHINE_ID),
    (MACHINE_ID, MACHINE_ID),
    ("uninitialized\n", None),
    (MACHINE_ID.upper(), None),
    ("", None),
])
def test_read_machine_id(tmp_path, content, expected):
    path = tmp_path / "machine-id"
    path.write_text(content)
    assert read_machine_id(str(path)) == expected


def test_parse_remote_document_is_pure_and_strict():
    assert parse_remote_document("noupgrade: true", "doc").noupgrade is True
    with pytest.raises(ConfigError, match="^doc: unknown keys a, b"):
        parse_remote_document("a: 1\nb: 2\n", "doc")


# -- the merge ----------------------------------------------------------

C = Config(branch="stable")
C_NOUP = Config(branch="stable", noupgrade=True)

# (config, kernel command line, remote settings) -> expected
MERGE = [
    ("nothing: the file decides", C, "", None,
     EffectiveSettings("stable", "config", None, None, False, ())),
    ("remote overrides the file", C, "", RemoteSettings(fetch_revision="testing"),
     EffectiveSettings("testing", "remote", None, None, False, ())),
    ("cmdline overrides the remote", C, "fetch-revision=dev", RemoteSettings(fetch_revision="testing"),
     EffectiveSettings("dev", "cmdline", None, None, False, ())),
    ("remote pin", C, "", RemoteSettings(update_revision=SHA1),
     EffectiveSettings("stable", "config", SHA1, "remote", False, ())),
    ("cmdline pin beats remote pin", C, "update-revision=abcd", RemoteSettings(update_revision=SHA1),
     EffectiveSettings("stable", "config", "abcd", "cmdline", False, ())),
    ("cmdline branch silences a remote pin", C, "fetch-revision=dev",
     RemoteSettings(update_revision=SHA1),
     EffectiveSettings("dev", "cmdline", None, None, False, ())),
    ("cmdline pin with remote branch", C, "update-revision=abcd",
     RemoteSettings(fetch_revision="testing"),
     EffectiveSettings("testing", "remote", "abcd", "cmdline", False, ())),
    ("noupgrade from the file", C_NOUP, "", None,
     EffectiveSettings("stable", "config", None, None, True, ("config",))),
    ("noupgrade from the remote", C, "", RemoteSettings(noupgrade=True),
     EffectiveSettings("stable", "config", None, None, True, ("remote",))),
    ("remote noupgrade: false does not undo the file", C_NOUP, "", RemoteSettings(noupgrade=False),
     EffectiveSettings("stable", "config", None, None, True, ("config",))),
    ("noupgrade from everyone", C_NOUP, "noupgrade", RemoteSettings(noupgrade=True),
     EffectiveSettings("stable", "config", None, None, True, ("cmdline", "remote", "config"))),
    ("a failed remote (None) changes nothing", C, "", None,
     EffectiveSettings("stable", "config", None, None, False, ())),
]


@pytest.mark.parametrize("config,cmdline,remote,expected", [m[1:] for m in MERGE],
                         ids=[m[0] for m in MERGE])
def test_effective_settings(config, cmdline, remote, expected):
    assert effective_settings(config, parse_cmdline(cmdline), remote) == expected


def test_effective_settings_with_default_boot():
    assert effective_settings(Config(), BootParams(), None).branch == "main"
