"""Real HTTP servers on 127.0.0.1 for the fetcher's tests: lighttpd, started per test.

Two kinds, both :class:`Lighttpd`:

* ``git_http_server``: git's smart HTTP protocol, ``git http-backend`` run by
  lighttpd's mod_cgi (the recipe of git-http-backend(1)).  Bare repositories
  put in ``server.repos_dir`` are served at ``server.repo_url(NAME)``.
* ``static_http_server``: plain files from ``server.document_root`` at
  ``server.file_url(NAME)``, with Range requests (lighttpd answers them for
  static files by itself) for resumed bundle downloads.

Faults the fetcher's tests need:

* :meth:`Lighttpd.kill` sends SIGKILL to lighttpd *and* its CGI children
  (``git http-backend``, ``git upload-pack``): lighttpd runs in a session of
  its own, so one ``killpg`` on its own process group reaches exactly them.
* :meth:`Lighttpd.kill_after` does that from a timer thread, and
  :meth:`Lighttpd.transfer_in_progress` says whether an upload-pack is
  running right now, for a test that waits for the middle of a transfer.
* ``kbytes_per_second`` (lighttpd's ``connection.kbytes-per-second``) slows
  every response down so a transfer lasts long enough to be interrupted;
  :meth:`Lighttpd.restart` changes it on the same port.

Import the fixtures into a conftest (``from servers import ...``); a test
that needs a server lighttpd lacks is skipped, saying which package to
install (``bash .ci/setup`` installs it).
"""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

LIGHTTPD = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Lighttpd:
    """One lighttpd process on 127.0.0.1, configured for git or static files."""

    def __init__(self, workdir: Path, *, git: bool,
                 kbytes_per_second: Optional[int] = None) -> None:
        self.workdir = Path(workdir)
        self.git = git
        self.kbytes_per_second = kbytes_per_second
        self.repos_dir = self.workdir / "repos"
        self.document_root = self.workdir / "htdocs"
        self.config_path = self.workdir / "lighttpd.conf"
        self.error_log = self.workdir / "error.log"
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None
        for directory in (self.repos_dir, self.document_root, self.workdir / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)

    # -- addresses -------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.port is not None, "the server has not been started"
        return f"http://127.0.0.1:{self.port}"

    def repo_url(self, name: str) -> str:
        """URL of the bare repository ``repos_dir/NAME`` (git servers)."""
        return f"{self.url}/git/{name}"

    def file_url(self, name: str) -> str:
        """URL of ``document_root/NAME`` (static servers)."""
        return f"{self.url}/{name}"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    # -- life cycle ------------------------------------------------------

    def _config(self) -> str:
        lines = [
            'server.modules = ("mod_alias", "mod_cgi", "mod_setenv", "mod_accesslog")',
            f'server.document-root = "{self.document_root}"',
            'server.bind = "127.0.0.1"',
            f"server.port = {self.port}",
            f'server.errorlog = "{self.error_log}"',
            f'accesslog.filename = "{self.workdir / "access.log"}"',
            f'server.upload-dirs = ("{self.workdir / "tmp"}")',
            'mimetype.assign = ("" => "application/octet-stream")',
            # Our own test data only: no index files, no directory listings.
            'index-file.names = ()',
            # Tests rewrite files in place (a remote document, a bundle
            # index); lighttpd's stat cache would otherwise announce the old
            # Content-Length for up to a second and cut the new body short.
            'server.stat-cache-engine = "disable"',
        ]
        if self.kbytes_per_second:
            lines.append(f"connection.kbytes-per-second = {int(self.kbytes_per_second)}")
        if self.git:
            lines += [
                # Stream with back-pressure instead of buffering the whole
                # pack: upload-pack then lives as long as the transfer, as
                # behind a real slow link, and transfer_in_progress() sees it.
                "server.stream-response-body = 2",
                f'alias.url = ("/git/" => "{GIT_HTTP_BACKEND}/")',
                '$HTTP["url"] =~ "^/git(/|$)" {',
                '    cgi.assign = ("" => "")',
                '    setenv.add-environment = (',
                f'        "GIT_PROJECT_ROOT" => "{self.repos_dir}",',
                '        "GIT_HTTP_EXPORT_ALL" => "1",',
                '        "GIT_CONFIG_NOSYSTEM" => "1",',
                f'        "HOME" => "{self.workdir}",',
                '    )',
                '}',
            ]
        return "\n".join(lines) + "\n"

    def start(self, port: Optional[int] = None) -> "Lighttpd":
        """Start on *port* (default: the last one, else a free one); wait until it listens."""
        problem = ""
        for _attempt in range(5):
            self.port = port or self.port or free_port()
            self.config_path.write_text(self._config())
            with open(self.workdir / "stderr.log", "ab") as stderr:
                self.process = subprocess.Popen(
                    [LIGHTTPD, "-D", "-f", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    start_new_session=True)  # its own process group: see kill()
            problem = self._wait_listening()
            if not problem:
                return self
            self._reap()
            if port is not None:
                break
            self.port = None  # someone took it between probe and bind: next port
        raise RuntimeError(f"lighttpd did not start: {problem}\n{self._logs()}")

    def _wait_listening(self, seconds: float = 10.0) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return f"exited with status {self.process.returncode}"
            with socket.socket() as client:
                client.settimeout(0.2)
                if client.connect_ex(("127.0.0.1", self.port)) == 0:
                    return ""
            time.sleep(0.02)
        return f"not listening on port {self.port} after {seconds} s"

    def stop(self) -> None:
        """Stop gracefully if running (SIGTERM, then SIGKILL), with its CGI children."""
        if self.process is None or self.process.poll() is not None:
            self._reap()
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._reap()

    def kill(self) -> None:
        """SIGKILL lighttpd and every CGI child at once, as a crash or power cut would."""
        self._reap()

    def kill_after(self, seconds: float) -> threading.Timer:
        """Call :meth:`kill` from a timer thread after *seconds* (cancel() to call off)."""
        timer = threading.Timer(seconds, self.kill)
        timer.daemon = True
        timer.start()
        return timer

    def restart(self, *, kbytes_per_second: Optional[int] = None) -> "Lighttpd":
        """Stop and start again on the same port, with a new throttle (None: none)."""
        self.stop()
        self.kbytes_per_second = kbytes_per_second
        return self.start(self.port)

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)  # the group lighttpd leads: only ours
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        """SIGKILL what is left of the group and collect lighttpd's status."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck kernel
            pass

    # -- looking inside --------------------------------------------------

    def transfer_in_progress(self) -> bool:
        """True while a ``git upload-pack`` started by this server runs."""
        if self.process is None or self.process.poll() is not None:
            return False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) != self.process.pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as stream:
                    argv = stream.read().split(b"\0")
            except (OSError, ProcessLookupError):
                continue
            if any(arg.endswith(b"upload-pack") for arg in argv):
                return True
        return False

    def _logs(self) -> str:
        parts = []
        for log in (self.error_log, self.workdir / "stderr.log"):
            if log.exists():
                parts.append(f"{log.name}: {log.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def __enter__(self) -> "Lighttpd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _require(path: str, package: str) -> None:
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} is missing: install the Debian package {package} "
                    "(bash .ci/setup does)")


@pytest.fixture
def git_http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lighttpd]:
    """A git smart-HTTP server; put bare repositories in ``.repos_dir``."""
    _require(LIGHTTPD, "lighttpd")
    _require(GIT_HTTP_BACKEND, "git")
    server = Lighttpd(tmp_path_factory.mktemp("git-http"), git=True)
    with server:
        yield server


@pytest.fixture
def static_http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lighttpd]:
    """A static file server with Range requests; put files in ``.document_root``."""
    _require(LIGHTTPD, "lighttpd")
    server = Lighttpd(tmp_path_factory.mktemp("static-http"), git=False)
    with server:
        yield server
