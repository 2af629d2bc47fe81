"""Issue 9: hostile servers, hostile content, lost refs -- one regression test
per hole, against real servers on 127.0.0.1 started by the test (lighttpd +
git http-backend, lighttpd for static files, tests/slow_server.py for the
hangs) and the real gitroot CLI.  Every test is bounded: a CLI call that
hung would hit its subprocess timeout and fail the test.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pygit2
import pytest

from slow_server import SlowServer
from tests.conftest import gitroot_cmd
from tests.lifecycle_support import BRANCH, Device, Publisher

CLI_SECONDS = 60        # no single CLI call in these tests may take longer


@pytest.fixture
def world(tmp_path, git_http_server):
    publisher = Publisher(tmp_path, git_http_server)
    first = publisher.release()
    device = Device(tmp_path, publisher)
    device.run("fetch")
    device.boot()
    device.run("mark-good")
    return publisher, device, first, git_http_server


def run(device, *args, check=False):
    return gitroot_cmd(*args, "--config", device.config, check=check, env=device.env(),
                       timeout=CLI_SECONDS)


def steered(device, name, url, **config):
    """The same device (repository, state, boot files) with other settings."""
    other = Device(device.base / name, _PublisherView(device), repository=device.repo,
                   state_dir=device.state_dir, boot_dir=device.boot_dir, **config)
    other.run_dir = device.run_dir
    other.cmdline = device.cmdline
    if url is not None:
        with open(other.config) as f:
            settings = json.load(f)
        settings["remotes"] = [url]
        with open(other.config, "w") as f:
            json.dump(settings, f)
    return other


class _PublisherView:
    """What Device() needs from a publisher, taken from an existing device."""

    def __init__(self, device):
        with open(device.config) as f:
            settings = json.load(f)
        self.url = settings["remotes"][0]
        self.allowed = settings["trusted_keys"]["allowed_signers"]


def git(repo, *args):
    return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def good_release(device, commit):
    run(device, "fetch", check=True)
    assert device.boot() == commit
    device.run("mark-good")


# -- 1: the remote document can neither roll a device back nor hold it ----

def test_remote_document_cannot_roll_back_or_hold(world, static_http_server):
    publisher, device, first, server = world
    second = publisher.release()
    good_release(device, second)
    doc = static_http_server.document_root / "device.yml"
    doc.write_text(f"update-revision: '{first}'\n")   # an older signed release
    remote = steered(device, "doc", None,
                     remote_config={"url": static_http_server.file_url("device.yml")})
    proc = run(remote, "fetch")
    assert proc.returncode == 10, proc.stderr
    assert "not a descendant" in proc.stderr and "update-revision" in proc.stderr
    st = remote.status()
    assert st["trial"] is None and not st["hold"]
    assert st["next_boot"]["commit"] == second
    assert st["last_fetch"]["result"] == "refused"
    # a newer release named by the document is pinned like a fetched one:
    # checked, and without holding later upgrades
    third = publisher.release()
    doc.write_text(f"update-revision: '{third}'\n")
    assert run(remote, "fetch", check=True).stdout.startswith("pinned:")
    st = remote.status()
    assert st["trial"]["commit"] == third and not st["hold"]


# -- 2: a release signed for one channel is refused on another ------------

def _signed_without_binding(publisher):
    """A signed commit on BRANCH made by plain git, with no channel trailer."""
    head = git(publisher.repo, "rev-parse", BRANCH)
    commit = git(publisher.repo, "-c", "gpg.format=ssh", "-c",
                 f"user.signingKey={publisher.key}", "commit-tree", "-S", "-p", head,
                 "-m", "unbound release", f"{head}^{{tree}}")
    git(publisher.repo, "update-ref", f"refs/heads/{BRANCH}", commit)
    return commit


def test_channel_replay_is_refused(world):
    publisher, device, first, server = world
    # experimental starts from stable's head, so it even descends from what
    # the device runs: only the binding can tell the channels apart
    git(publisher.repo, "update-ref", "refs/heads/experimental", BRANCH)
    src = publisher.tree()
    experimental = gitroot_cmd("commit", src, "--repo", publisher.repo, "--branch",
                               "experimental", "--sign-key", publisher.key).stdout.strip()
    git(publisher.repo, "update-ref", f"refs/heads/{BRANCH}", experimental)
    proc = run(device, "fetch")
    assert proc.returncode == 10, proc.stderr
    assert "signed for experimental, not for stable" in proc.stderr
    st = device.status()
    assert st["trial"] is None and st["last_fetch"]["result"] == "refused"
    # promotion: a release bound to both channels is accepted on stable
    git(publisher.repo, "update-ref", f"refs/heads/{BRANCH}", first)
    git(publisher.repo, "update-ref", "refs/heads/testing", BRANCH)
    promoted = gitroot_cmd("commit", src, "--repo", publisher.repo, "--branch", "testing",
                           "--channel", BRANCH, "--sign-key", publisher.key).stdout.strip()
    git(publisher.repo, "update-ref", f"refs/heads/{BRANCH}", promoted)
    assert run(device, "fetch", check=True).stdout.startswith("pinned:")
    assert device.status()["trial"]["commit"] == promoted


def test_unbound_release_refused_under_strict_warned_under_sloppy(world):
    publisher, device, first, server = world
    unbound = _signed_without_binding(publisher)
    proc = run(device, "fetch")
    assert proc.returncode == 10 and "no channel binding" in proc.stderr, proc.stderr
    sloppy = steered(device, "sloppy", publisher.url, signature_policy="sloppy")
    proc = run(sloppy, "fetch", check=True)
    assert proc.stdout.startswith("pinned:") and "no channel binding" in proc.stderr
    st = sloppy.status()
    assert st["trial"]["commit"] == unbound
    assert any("no channel binding" in w for w in st["last_fetch"]["warnings"])
    # today's (unbound) releases stay readable: verify and pin take them
    gitroot_cmd("verify", "--repo", device.repo, unbound, "--allowed-signers",
                publisher.allowed)
    run(device, "pin", first, check=True)


# -- 3: a server freezing the device on its current release is noticed ----

def test_frozen_server_is_refused_and_shown_in_status(world):
    publisher, device, first, server = world
    frozen = steered(device, "frozen", publisher.url, max_signature_age="1s")
    time.sleep(1.5)     # the release the device runs is now "too old"
    proc = run(frozen, "fetch")
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert "frozen server" in proc.stderr and "still offers only this" in proc.stderr
    text = run(frozen, "status", "--no-verify", check=True).stdout
    assert "last fetch:" in text and "refused" in text and "frozen server" in text
    assert frozen.status()["next_boot"]["commit"] == first


# -- 4: gc keeps what the device boots, even with its refs lost -----------

def test_gc_with_lost_refs_keeps_everything_bootable(world):
    publisher, device, first, server = world
    second = publisher.release(big=100_000)
    good_release(device, second)
    third = publisher.release(big=100_000)
    good_release(device, third)                 # last good 3, previous good 2
    repo = pygit2.Repository(device.repo)
    for ref in list(repo.references):
        if ref.startswith("refs/gitroot/"):
            repo.references.delete(ref)         # refs lost, state.json intact
    # booted: a debug pin of the oldest release, by a short id
    device.cmdline = f"quiet update-revision={first[:10]}"
    assert device.boot() == first[:10]
    proc = run(device, "gc", "--keep", "0", check=True)
    assert first[:12] in proc.stdout
    for commit in (first, second, third):
        gitroot_cmd("verify", "--repo", device.repo, commit, "--allowed-signers",
                    publisher.allowed, "--full", timeout=CLI_SECONDS)
    # the device still boots its last good release once the pin is gone
    device.cmdline = "quiet"
    assert device.boot() == third


def test_gc_refuses_when_it_cannot_tell_what_is_booted(world):
    publisher, device, first, server = world
    os.unlink(os.path.join(device.run_dir, "booted"))
    proc = run(device, "gc", "--keep", "0")
    assert proc.returncode == 8 and "cannot tell which release is booted" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with open(os.path.join(device.run_dir, "booted"), "w") as f:
        json.dump({"commit": "0123456789", "reason": "debug-pin", "detail": ""}, f)
    proc = run(device, "gc", "--keep", "0")
    assert proc.returncode == 8 and "not in the repository" in proc.stderr


# -- 6: a stalled server ends in a recorded failure, within the deadline --

@pytest.mark.parametrize("what", ["static index dribbled", "headers dribbled",
                                  "git smart http dribbled"])
def test_stalled_fetch_ends_with_a_recorded_failure(world, what):
    publisher, device, first, server = world
    static = what != "git smart http dribbled"
    with SlowServer(b'{"format": "gitroot-bundles/1"}' + b" " * 100, interval=0.5,
                    headers=what == "headers dribbled") as slow:
        url = slow.url("/os/" if static else "/git/os.git")
        stalled = steered(device, "stalled", url, fetch_timeout="3s")
        started = time.monotonic()
        proc = run(stalled, "fetch")
        elapsed = time.monotonic() - started
        # git's HTTP helper went with git: nothing still holds the connection
        left = _processes_mentioning(f"127.0.0.1:{slow.port}")
    assert proc.returncode == 9, proc.stderr
    assert "not done within 3 s" in proc.stderr
    assert not left, left
    assert elapsed < 20, elapsed
    st = stalled.status()
    assert st["last_fetch"]["result"] == "failed"
    assert "not done within 3 s" in st["last_fetch"]["message"]
    assert st["next_boot"]["commit"] == first


def test_stalled_bundle_download_ends_with_a_recorded_failure(world):
    """index.json arrives at once, the bundle it lists one byte at a time."""
    publisher, device, first, server = world
    index = {"format": "gitroot-bundles/1", "heads": {BRANCH: "e" * 40},
             "bundles": [{"branch": BRANCH, "from": first, "to": "e" * 40,
                          "file": "stable-upgrade.bundle.xz", "size": 1000,
                          "sha256": "0" * 64}]}
    with SlowServer(routes={"/os/index.json": (json.dumps(index).encode(), 0),
                            "/os/stable-upgrade.bundle.xz": (b"\xfd" * 1000, 0.5)}) as slow:
        stalled = steered(device, "stalled-bundle", slow.url("/os/"), fetch_timeout="4s")
        started = time.monotonic()
        proc = run(stalled, "fetch")
        elapsed = time.monotonic() - started
    assert proc.returncode == 9, proc.stderr
    assert "not done within 4 s" in proc.stderr
    assert elapsed < 20, elapsed
    st = stalled.status()
    assert st["last_fetch"]["result"] == "failed" and st["next_boot"]["commit"] == first


def _processes_mentioning(text):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in argv:
                found.append(argv)
    return found


def test_remote_document_with_dribbled_headers_is_cut_at_its_timeout(world):
    publisher, device, first, server = world
    with SlowServer(b"noupgrade: true\n", interval=0.5, headers=True,
                    content_type="application/yaml") as slow:
        remote = steered(device, "doc", publisher.url,
                         remote_config={"url": slow.url("/doc.yml"), "timeout": 2})
        started = time.monotonic()
        proc = run(remote, "fetch", check=True)
        elapsed = time.monotonic() - started
    assert "took longer than 2 s" in proc.stderr and "ignored" in proc.stderr
    assert proc.stdout.startswith("up-to-date:")       # noupgrade never arrived
    assert elapsed < 30, elapsed
    assert any("took longer than 2 s" in w for w in remote.status()["last_fetch"]["warnings"])


def test_sigterm_ends_a_stalled_fetch_with_a_recorded_failure(world):
    """What systemd's TimeoutStartSec does to a fetch that is still running."""
    publisher, device, first, server = world
    with SlowServer(b"{}" + b" " * 1000, interval=0.5) as slow:
        stalled = steered(device, "term", slow.url("/os/"))
        proc = subprocess.Popen([sys.executable, "-m", "gitroot", "fetch", "--config",
                                 stalled.config], env=stalled.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert slow.wait_for_client(), "the fetch never asked the server"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=CLI_SECONDS)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    st = stalled.status()
    assert st["last_fetch"]["result"] == "failed"
    assert "SIGTERM" in st["last_fetch"]["message"]


# -- 7: deeply nested documents are one-line errors, recorded -------------

def test_deeply_nested_index_and_remote_document(world, static_http_server):
    publisher, device, first, server = world
    root = static_http_server.document_root
    (root / "os").mkdir()
    (root / "os" / "index.json").write_bytes(b"[" * 200_000)
    nested = steered(device, "nested", static_http_server.file_url("os/"))
    proc = run(nested, "fetch")
    assert proc.returncode == 9, proc.stderr
    assert "nested too deeply" in proc.stderr and "Traceback" not in proc.stderr
    st = nested.status()
    assert st["last_fetch"]["result"] == "failed"
    assert "nested too deeply" in st["last_fetch"]["message"]
    # a remote document of 40 KB of '[' is ignored, and the fetch says so
    (root / "doc.yml").write_bytes(b"[" * 40_000)
    remote = steered(device, "nested-doc", publisher.url,
                     remote_config={"url": static_http_server.file_url("doc.yml")})
    proc = run(remote, "fetch", check=True)
    assert "nested too deeply" in proc.stderr
    assert any("nested too deeply" in w for w in remote.status()["last_fetch"]["warnings"])


# -- 10: boot-select and status fall back to what exists ------------------

def _drop_commit(repo_path, commit, keep):
    """Rebuild the repository with *keep* only, so *commit* is really gone."""
    fresh = repo_path + ".new"
    git_args = ["git", "init", "-q", "--bare", fresh]
    subprocess.run(git_args, check=True)
    for number, c in enumerate(keep):
        subprocess.run(["git", "--git-dir", fresh, "fetch", "-q", repo_path,
                        f"{c}:refs/gitroot/keep/{number}"], check=True, capture_output=True)
    refs = {}
    for line in git(repo_path, "for-each-ref", "--format=%(refname) %(objectname)",
                    "refs/gitroot/").splitlines():
        name, target = line.split()
        refs[name] = target
    os.rename(repo_path, repo_path + ".old")
    os.rename(fresh, repo_path)
    for name, target in refs.items():     # refs as they were, even to the lost commit
        path = os.path.join(repo_path, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(target + "\n")
    assert subprocess.run(["git", "--git-dir", repo_path, "cat-file", "-e", commit]
                          ).returncode != 0


def test_boot_falls_back_past_a_missing_last_good_release(world):
    publisher, device, first, server = world
    second = publisher.release()
    good_release(device, second)
    _drop_commit(device.repo, second, keep=[first])
    st = device.status()
    assert st["next_boot"]["commit"] == first and st["next_boot"]["reason"] == "previous-good"
    proc = run(device, "boot-select", "--with-reason", check=True)
    assert proc.stdout.split() == [first, "previous-good"]


def test_unreadable_state_boots_from_refs_and_is_repaired(world):
    publisher, device, first, server = world
    second = publisher.release()
    good_release(device, second)
    state_file = os.path.join(device.state_dir, "state.json")
    for verb in ("fetch", "mark-good", "rollback", "pin"):
        with open(state_file, "wb") as f:
            f.write(b"\xff\xfe garbage")
        status = run(device, "status", "--no-verify", check=True).stdout
        assert "UNREADABLE" in status
        proc = run(device, "boot-select", "--with-reason", "--dry-run", check=True)
        assert proc.stdout.split() == [second, "last-good"], verb
        assert "Traceback" not in proc.stderr
        # the next state change rewrites the file from the refs
        proc = run(device, *(["pin", first] if verb == "pin" else [verb]), check=True)
        assert "rebuilt from refs/gitroot/" in proc.stderr, verb
        with open(state_file) as f:
            repaired = json.load(f)
        assert repaired["last_good"] == second and repaired["previous_good"] == first, verb
        if verb in ("pin", "rollback"):
            assert repaired["trial"]["commit"] == first, verb
        assert device.status()["state_error"] is None, verb


# -- 11: --branch is checked as a branch name -----------------------------

def test_fetch_branch_must_be_a_branch_name(world):
    publisher, device, first, server = world
    for branch in ("*", "st*ble", "refs/heads/stable", "-x", "a..b"):
        proc = run(device, "fetch", f"--branch={branch}")
        assert proc.returncode == 2, (branch, proc.stderr)
        assert "is not a branch name" in proc.stderr, branch
        assert len(proc.stderr.strip().splitlines()) == 1, branch
    assert device.status()["next_boot"]["commit"] == first
