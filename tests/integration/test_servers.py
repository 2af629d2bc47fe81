"""The server fixtures work: git clones over smart HTTP, Range requests, kills, throttling."""

import os
import subprocess
import time

import pytest
import requests

from servers import Lighttpd


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def git(*args, cwd=None, check=True):
    return subprocess.run(["git", *map(str, args)], cwd=cwd, check=check,
                          capture_output=True, text=True)


def make_bare_repo(server: Lighttpd, name: str, files: dict) -> str:
    """A bare repository ``NAME`` in the server's repos_dir with one commit; its id."""
    work = server.workdir / f"{name}-work"
    git("init", "-q", "-b", "main", work)
    for path, content in files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "release 1", cwd=work)
    git("clone", "-q", "--bare", work, server.repos_dir / name)
    return git("rev-parse", "HEAD", cwd=work).stdout.strip()


def test_git_clone_over_smart_http(git_http_server, tmp_path):
    head = make_bare_repo(git_http_server, "root.git",
                          {"etc/hostname": b"device\n", "usr/bin/tool": b"\x7fELF" + bytes(range(256))})
    url = git_http_server.repo_url("root.git")
    # the smart protocol, not the dumb one: http-backend answers with its own type
    refs = requests.get(f"{url}/info/refs", params={"service": "git-upload-pack"}, timeout=10)
    assert refs.status_code == 200
    assert refs.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"

    clone = tmp_path / "clone"
    git("clone", "-q", url, clone)
    assert git("rev-parse", "HEAD", cwd=clone).stdout.strip() == head
    assert (clone / "etc/hostname").read_bytes() == b"device\n"
    git("fsck", "--strict", cwd=clone)


def test_pygit2_fetches_over_smart_http(git_http_server, tmp_path):
    pygit2 = pytest.importorskip("pygit2")
    head = make_bare_repo(git_http_server, "root.git", {"a": b"a\n"})
    repo = pygit2.init_repository(str(tmp_path / "device.git"), bare=True)
    remote = repo.remotes.create("origin", git_http_server.repo_url("root.git"))
    remote.fetch(["+refs/heads/main:refs/remotes/origin/main"])
    assert str(repo.references["refs/remotes/origin/main"].target) == head


def test_missing_repository_is_404(git_http_server):
    reply = requests.get(git_http_server.repo_url("nope.git") + "/info/refs",
                         params={"service": "git-upload-pack"}, timeout=10)
    assert reply.status_code == 404


def test_static_range_requests(static_http_server):
    data = os.urandom(100_000)
    (static_http_server.document_root / "r1-r2.bundle").write_bytes(data)
    url = static_http_server.file_url("r1-r2.bundle")

    whole = requests.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers.get("Accept-Ranges") == "bytes"

    part = requests.get(url, headers={"Range": "bytes=1000-1999"}, timeout=10)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert part.content == data[1000:2000]

    # resuming an interrupted download: the rest from an offset
    rest = requests.get(url, headers={"Range": "bytes=60000-"}, timeout=10)
    assert rest.status_code == 206 and rest.content == data[60000:]

    beyond = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert beyond.status_code == 416

    assert requests.get(static_http_server.file_url("missing"), timeout=10).status_code == 404


def test_throttle_slows_transfers(static_http_server):
    data = os.urandom(64 * 1024)
    (static_http_server.document_root / "f").write_bytes(data)
    static_http_server.restart(kbytes_per_second=32)
    started = time.monotonic()
    assert requests.get(static_http_server.file_url("f"), timeout=30).content == data
    throttled = time.monotonic() - started
    assert throttled > 1.0, f"64 KiB at 32 KiB/s took only {throttled:.2f} s"

    static_http_server.restart(kbytes_per_second=None)
    started = time.monotonic()
    assert requests.get(static_http_server.file_url("f"), timeout=30).content == data
    assert time.monotonic() - started < throttled


def test_kill_static_server_mid_download(static_http_server):
    data = os.urandom(512 * 1024)
    (static_http_server.document_root / "big").write_bytes(data)
    static_http_server.restart(kbytes_per_second=32)
    received = b""
    # urllib3 2 raises on a body shorter than its Content-Length; Debian's
    # urllib3 1.26 just ends the body early.  A client must check the length
    # itself (the fetcher does), so the test accepts both.
    try:
        with requests.get(static_http_server.file_url("big"), stream=True, timeout=10) as reply:
            for chunk in reply.iter_content(4096):
                received += chunk
                if len(received) >= 16 * 1024 and static_http_server.process.poll() is None:
                    static_http_server.kill()
    except requests.RequestException:
        pass
    assert 16 * 1024 <= len(received) < len(data)
    assert static_http_server.process.poll() is not None
    # and it comes back on the same port, where the download can resume
    static_http_server.restart()
    rest = requests.get(static_http_server.file_url("big"),
                        headers={"Range": f"bytes={len(received)}-"}, timeout=10)
    assert received + rest.content == data


def test_kill_git_server_mid_clone(git_http_server, tmp_path):
    # random bytes do not compress: the pack is about as big as the data
    make_bare_repo(git_http_server, "big.git", {"blob": os.urandom(1024 * 1024)})
    git_http_server.restart(kbytes_per_second=64)
    clone = subprocess.Popen(["git", "clone", "-q", git_http_server.repo_url("big.git"),
                              str(tmp_path / "clone")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not git_http_server.transfer_in_progress():
            assert clone.poll() is None, "the clone ended before the transfer began"
            assert time.monotonic() < deadline, "no upload-pack ever ran"
            time.sleep(0.05)
        time.sleep(0.5)  # some of the pack is on its way
        group = git_http_server.pid
        git_http_server.kill()
        assert clone.wait(30) != 0
    finally:
        if clone.poll() is None:
            clone.kill()
            clone.wait()
    assert not git_http_server.transfer_in_progress()
    # SIGKILL is final, but the dead wait as zombies until init reaps them,
    # and on a loaded machine a killed process takes a moment to finish dying
    deadline = time.monotonic() + 30
    while _live_members(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_members(group) == []


def _live_members(pgid):
    """Processes of group *pgid* that are not zombies."""
    live = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            live.append(pid)
    return live
