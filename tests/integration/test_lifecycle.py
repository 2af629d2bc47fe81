"""The upgrade life cycle against a real git smart-HTTP server on 127.0.0.1.

A publisher signs releases with a real SSH key (`gitroot commit --sign-key`)
into a bare repository that lighttpd + git http-backend serve; a device
(its own config, repository, state and boot directories under tmp_path)
runs the real `gitroot` CLI: fetch, status, boot-select, mark-good, pin,
rollback, log, diff, gc.  Boots are simulated by `gitroot boot-select`,
which is exactly what the initramfs runs; the kernel command line is
injected through GITROOT_CMDLINE.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pygit2
import pytest

from tests.conftest import gitroot_cmd
from tests.lifecycle_support import BRANCH, Device, Publisher


@pytest.fixture
def world(tmp_path, git_http_server):
    publisher = Publisher(tmp_path, git_http_server)
    first = publisher.release()
    device = Device(tmp_path, publisher)
    # Provisioning: the device ships with the first release as last good.
    gitroot_cmd("fetch", "--config", device.config, env=device.env())
    device.boot()
    device.run("mark-good")
    return publisher, device, first, git_http_server


def fsck(repo):
    proc = subprocess.run(["git", "-C", repo, "fsck", "--strict"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_provisioned_device(world):
    publisher, device, first, _ = world
    st = device.status()
    assert st["last_good"] == first
    assert st["trial"] is None
    assert st["booted"]["commit"] == first
    assert st["signatures"]["last_good"]["ok"]
    assert "release@example.org" in st["signatures"]["last_good"]["message"]
    assert device.installed_kernel(first) == b"kernel 1"


def test_signed_release_is_fetched_tried_and_marked_good(world):
    publisher, device, first, _ = world
    second = publisher.release(extra_files=3)
    out = device.run("fetch").stdout
    assert out.startswith("pinned:")
    st = device.status()
    assert st["trial"]["commit"] == second and st["trial"]["tries_left"] == 2
    assert st["next_boot"]["commit"] == second
    assert st["last_fetch"]["result"] == "pinned"
    pending = st["pending_update"]
    # 3 new files plus the new kernel and initrd; the old kernel and initrd go
    assert (pending["files_added"], pending["files_removed"]) == (5, 2)
    assert pending["files_changed"] >= 1                   # etc/os-release
    assert pending["bytes"] > 0
    assert device.installed_kernel(second) == b"kernel 2"
    assert os.readlink(os.path.join(device.boot_dir, "gitroot", "trial")) == second
    # fetching again finds nothing new
    assert device.run("fetch").stdout.startswith("up-to-date:")
    # boot it and mark it good
    assert device.boot() == second
    assert device.status()["trial"]["tries_left"] == 1
    device.run("mark-good")
    st = device.status()
    assert st["last_good"] == second and st["previous_good"] == first and st["trial"] is None
    # a third release likewise
    third = publisher.release()
    device.run("fetch")
    assert device.boot() == third
    device.run("mark-good")
    assert device.status()["last_good"] == third
    # the boot directory keeps the running (= last good) and previous good
    # releases' kernels next to a new trial's, and drops older ones
    fourth = publisher.release()
    device.run("fetch")
    kernels = sorted(e for e in os.listdir(os.path.join(device.boot_dir, "gitroot"))
                     if len(e) == 40)
    assert kernels == sorted([second, third, fourth])
    assert device.installed_kernel(third) == b"kernel 3"
    assert device.installed_kernel(fourth) == b"kernel 4"
    log = device.run("log", "--json").stdout
    actions = [h["action"] for h in json.loads(log)]
    assert actions.count("trial") == 4 and actions.count("good") == 3
    diff = device.run("diff", "--stat", third, "--from", first).stdout
    # release 1 -> 3: both kernels and initrds replaced, os-release changed,
    # and the directories holding them (their mtimes); bytes = new content
    new_bytes = len(b"kernel 3") + len(b"initrd 3") + len(b"release 3\n")
    assert diff.strip() == (f"{first[:12]}..{third[:12]}: 2 added, 4 changed, 2 removed; "
                            f"{new_bytes} bytes")
    full = device.run("diff", third, "--from", first).stdout.splitlines()
    assert sorted(full[:-1]) == sorted([
        "A /boot/vmlinuz-6.1.0-3-amd64", "A /boot/initrd.img-6.1.0-3-amd64",
        "D /boot/vmlinuz-6.1.0-1-amd64", "D /boot/initrd.img-6.1.0-1-amd64",
        "M /etc/os-release", "M /boot", "M /etc", "M /"]), full


def test_trial_that_never_boots_falls_back_to_last_good(world):
    publisher, device, first, _ = world
    second = publisher.release()
    device.run("fetch")
    assert device.boot() == second          # try 1: never marked good (it crashed)
    assert device.boot() == second          # try 2
    assert device.boot() == first           # tries exhausted: last good
    st = device.status()
    assert st["trial"] is None
    assert st["abandoned"]["commit"] == second
    assert st["next_boot"]["commit"] == first
    # the same release is not pinned again by the next fetch...
    assert device.run("fetch").stdout.startswith("abandoned:")
    st = device.status()
    assert st["trial"] is None and st["next_boot"]["commit"] == first
    assert st["last_fetch"]["result"] == "abandoned"
    # ...but a newer one is
    third = publisher.release()
    assert device.run("fetch").stdout.startswith("pinned:")
    assert device.boot() == third


def test_pin_and_rollback(world):
    publisher, device, first, _ = world
    second = publisher.release()
    device.run("fetch")
    device.boot()
    device.run("mark-good")
    # rollback: the previous good release, upgrades held
    device.run("rollback")
    st = device.status()
    assert st["next_boot"]["commit"] == first and st["hold"]
    third = publisher.release()
    assert device.run("fetch").stdout.startswith("held:")
    assert device.status()["trial"]["commit"] == first
    assert device.boot() == first
    device.run("mark-good")
    assert device.status()["last_good"] == first
    # pin by hand, then release the hold
    device.run("pin", second)
    assert device.status()["next_boot"]["commit"] == second
    device.run("pin", "--release")
    assert device.run("fetch").stdout.startswith("pinned:")
    assert device.status()["trial"]["commit"] == third
    # update-revision= on the kernel command line boots that one, consuming nothing
    device.cmdline = f"quiet update-revision={second}"
    assert device.boot() == second
    assert device.status()["trial"]["tries_left"] == 2
    with pytest.raises(AssertionError, match="debug pin"):
        device.run("mark-good")


def test_gc_keeps_what_it_must(world):
    publisher, device, first, _ = world
    commits = [first]
    for _ in range(3):
        commits.append(publisher.release(big=200_000))
        device.run("fetch")
        device.boot()
        device.run("mark-good")
    fourth = publisher.release()
    device.run("fetch")                      # a pending trial
    device.run("gc", "--keep", "0")
    repo = pygit2.Repository(device.repo)
    kept = {c for c in commits + [fourth] if pygit2.Oid(hex=c) in repo.odb}
    # booted (= last good), previous good and trial are kept; the oldest is gone
    assert kept == {commits[3], commits[2], fourth}
    for c in kept:
        gitroot_cmd("verify", "--repo", device.repo, c, "--allowed-signers",
                    publisher.allowed, "--full")
    fsck(device.repo)
    # the device can still fetch and upgrade after gc
    fifth = publisher.release()
    assert device.run("fetch").stdout.startswith("pinned:")
    assert device.status()["trial"]["commit"] == fifth


@pytest.mark.parametrize("kind", ["unsigned", "untrusted", "tampered", "older"])
def test_bad_releases_are_refused_and_nothing_is_pinned(world, kind):
    publisher, device, first, server = world
    before = device.status()
    if kind == "unsigned":
        publisher.release(key=False)
        expect = "not signed"
    elif kind == "untrusted":
        publisher.release(key=publisher.other_key)
        expect = "which is not in"
    elif kind == "tampered":
        good = publisher.release()
        # rewrite the signed commit's message, keeping the signature
        repo = pygit2.Repository(publisher.repo)
        raw = repo.odb.read(pygit2.Oid(hex=good))[1]
        forged = raw.replace(b"release 2", b"release 2, trust me")
        oid = repo.odb.write(1, forged)
        repo.create_reference_direct(f"refs/heads/{BRANCH}", oid, True)
        expect = "does not match the signed content"
    else:
        publisher.release()
        device.run("fetch")
        device.boot()
        device.run("mark-good")
        before = device.status()
        repo = pygit2.Repository(publisher.repo)
        repo.create_reference_direct(f"refs/heads/{BRANCH}", pygit2.Oid(hex=first), True)
        expect = "not a descendant"
    proc = device.run("fetch", check=False)
    # exit statuses of docs/operations.md: no signature, untrusted, bad, refused
    assert proc.returncode == {"unsigned": 21, "untrusted": 23, "tampered": 22,
                               "older": 10}[kind], proc.stderr
    assert expect in proc.stderr.lower(), proc.stderr
    after = device.status()
    for key in ("trial", "last_good", "previous_good", "next_boot"):
        assert after[key] == before[key], key
    assert after["last_fetch"]["result"] == "refused"
    assert expect in after["last_fetch"]["message"].lower()


def test_noupgrade_on_the_command_line_fetches_nothing(world):
    publisher, device, first, server = world
    publisher.release()
    # With the server gone, any attempt to fetch would fail: noupgrade must
    # not even try.
    server.kill()
    device.cmdline = "quiet noupgrade"
    proc = device.run("fetch")
    said = "noupgrade is set by the kernel command line: not fetching"
    assert proc.stdout.strip() == f"skipped: {said}"
    st = device.status()
    assert st["trial"] is None
    assert (st["last_fetch"]["result"], st["last_fetch"]["message"]) == ("skipped", said)
    device.cmdline = "quiet"
    proc = device.run("fetch", check=False)
    assert proc.returncode == 9 and "failed" in proc.stderr


def test_fetch_revision_on_the_command_line_picks_the_branch(world):
    publisher, device, first, server = world
    src = publisher.tree()
    beta = gitroot_cmd("commit", src, "--repo", publisher.repo, "--branch", "beta",
                       "--sign-key", publisher.key).stdout.strip()
    device.cmdline = "quiet fetch-revision=beta"
    device.run("fetch", "--allow-downgrade")
    assert device.status()["trial"]["commit"] == beta


def test_two_fetches_at_once_are_refused(world):
    publisher, device, first, server = world
    store_lock = os.path.join(device.state_dir, "fetch.lock")
    import fcntl
    with open(store_lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        proc = device.run("fetch", check=False)
    assert proc.returncode == 8 and "a fetch is already running" in proc.stderr


def _fetch_in_background(device):
    import sys
    # its own session, so the test can kill the fetcher and its git child
    # together, the way a power cut would, without touching other processes
    return subprocess.Popen(
        [sys.executable, "-m", "gitroot", "fetch", "--config", device.config],
        env=device.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)


def _wait_for_transfer(server, proc, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.transfer_in_progress():
            time.sleep(0.5)
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_fetcher_killed_mid_transfer_then_completes(world):
    publisher, device, first, server = world
    big = publisher.release(big=8_000_000)
    server.restart(kbytes_per_second=500)
    proc = _fetch_in_background(device)
    assert _wait_for_transfer(server, proc), "the transfer never started"
    # kill the fetcher and its git child (power cut / OOM killer)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    st = device.status()
    assert st["trial"] is None and st["last_good"] == first
    fsck(device.repo)
    # what the killed git left: its partial pack, and (had it been cut
    # while updating the incoming ref) a ref lock that would stop every
    # later fetch
    partial = [os.path.join(device.repo, "objects", "pack", name)
               for name in os.listdir(os.path.join(device.repo, "objects", "pack"))
               if name.startswith("tmp_pack_")]
    assert partial and os.path.getsize(partial[0]) > 0
    lock = os.path.join(device.repo, "refs", "gitroot", "incoming", BRANCH + ".lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, "w") as f:
        f.write(first + "\n")
    server.restart(kbytes_per_second=0)
    # written in this boot: perhaps a git of this boot's, so kept (the
    # lock then stops the fetch, and nothing is pinned)
    proc = device.run("fetch", check=False)
    assert proc.returncode != 0 and ".lock" in proc.stderr, proc.stderr
    assert os.path.exists(partial[0]) and device.status()["trial"] is None
    # after a reboot (the files predate this boot) the fetch clears them
    from gitroot.device.leftovers import boot_time
    for path in partial + [lock]:
        os.utime(path, (boot_time() - 60,) * 2)
    assert device.run("fetch").stdout.startswith("pinned:")
    assert device.status()["trial"]["commit"] == big
    assert not os.path.exists(lock) and not any(map(os.path.exists, partial))
    fsck(device.repo)


def test_server_killed_mid_transfer(world):
    publisher, device, first, server = world
    publisher.release(big=8_000_000)
    server.restart(kbytes_per_second=500)
    proc = _fetch_in_background(device)
    assert _wait_for_transfer(server, proc), "the transfer never started"
    server.kill()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 9, err          # FetchError
    assert b"failed" in err
    st = device.status()
    assert st["trial"] is None and st["last_good"] == first
    assert st["last_fetch"]["result"] == "failed"
    fsck(device.repo)


def test_full_disk_during_fetch(world, tmp_path):
    """The device's repository on a small tmpfs that the release does not fit."""
    publisher, device, first, server = world
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        shutil.copytree(device.repo, small / "repo.git", symlinks=True)
        device_small = Device(tmp_path / "small-device", publisher,
                              repository=str(small / "repo.git"),
                              state_dir=device.state_dir, boot_dir=device.boot_dir)
        device_small.run_dir = device.run_dir
        publisher.release(big=6_000_000)
        proc = device_small.run("fetch", check=False)
        assert proc.returncode == 9, proc.stderr
        assert "space" in proc.stderr.lower(), proc.stderr
        st = device_small.status()
        assert st["trial"] is None and st["last_good"] == first
        assert st["next_boot"]["commit"] == first
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_stale_release_from_a_frozen_server_is_refused(tmp_path, git_http_server):
    publisher = Publisher(tmp_path, git_http_server)
    first = publisher.release(age=3 * 86400)        # signed three days ago
    device = Device(tmp_path, publisher, max_signature_age="2d")
    proc = device.run("fetch", check=False)
    assert proc.returncode == 10 and "frozen server" in proc.stderr, proc.stderr
    st = device.status()
    assert st["trial"] is None and st["last_fetch"]["result"] == "refused"
    assert st["last_good"] is None and st["last_fetch"]["commit"] == first


def test_dead_remote_falls_back_to_the_next(world):
    publisher, device, first, server = world
    second = publisher.release()
    dead = Device(device.base / "dead", publisher,
                  remotes=["http://127.0.0.1:9/git/os.git", publisher.url],
                  repository=device.repo, state_dir=device.state_dir,
                  boot_dir=device.boot_dir)
    dead.run_dir = device.run_dir
    proc = dead.run("fetch")
    assert proc.stdout.startswith("pinned:")
    assert "127.0.0.1:9" in proc.stderr            # the failure was logged
    assert dead.status()["trial"]["commit"] == second


def test_bad_remote_config_document_changes_nothing(world, static_http_server):
    publisher, device, first, server = world
    publisher.release()
    (static_http_server.document_root / "device.yml").write_text("fetch-revision: [unclosed\n")
    bad = Device(device.base / "bad", publisher,
                 remote_config={"url": static_http_server.file_url("device.yml")},
                 repository=device.repo, state_dir=device.state_dir,
                 boot_dir=device.boot_dir)
    bad.run_dir = device.run_dir
    proc = bad.run("fetch")
    assert "remote configuration" in proc.stderr and "ignored" in proc.stderr
    assert proc.stdout.startswith("pinned:")      # followed the config file's branch
    # a good document steers the branch
    src = publisher.tree()
    beta = gitroot_cmd("commit", src, "--repo", publisher.repo, "--branch", "beta",
                       "--sign-key", publisher.key).stdout.strip()
    (static_http_server.document_root / "device.yml").write_text("fetch-revision: beta\n")
    bad.run("fetch", "--allow-downgrade")
    assert bad.status()["trial"]["commit"] == beta


def test_offline_update_from_a_bundle_file(world):
    publisher, device, first, server = world
    second = publisher.release()
    bundle = str(device.base / "update.bundle")
    subprocess.run(["git", "-C", publisher.repo, "bundle", "create", bundle,
                    f"{first}..{BRANCH}"], check=True, capture_output=True)
    assert device.run("fetch", "--from", bundle).stdout.startswith("pinned:")
    assert device.status()["trial"]["commit"] == second


def test_update_revision_from_the_remote_document_is_pinned_not_held(world, static_http_server):
    publisher, device, first, server = world
    second = publisher.release()
    third = publisher.release()
    (static_http_server.document_root / "device.yml").write_text(f"update-revision: {second}\n")
    steered = Device(device.base / "steered", publisher,
                     remote_config={"url": static_http_server.file_url("device.yml")},
                     repository=device.repo, state_dir=device.state_dir,
                     boot_dir=device.boot_dir)
    steered.run_dir = device.run_dir
    assert steered.run("fetch").stdout.startswith("pinned:")
    st = steered.status()
    # pinned like a fetched release (checked, newer), never holding upgrades
    assert st["trial"]["commit"] == second and not st["hold"]
    assert steered.boot() == second
    assert third != second


def test_update_revision_on_the_command_line_is_fetched_and_booted(world):
    publisher, device, first, server = world
    second = publisher.release()
    publisher.release()
    device.cmdline = f"quiet update-revision={second}"
    out = device.run("fetch").stdout
    assert out.startswith("debug-pin:") and second[:12] in out
    assert device.status()["trial"] is None      # nothing scheduled
    assert device.boot() == second                # booted directly
    device.cmdline = "quiet"
    assert device.boot() == first                 # gone with the command line option


def test_mark_good_is_not_held_up_by_a_stalled_fetch(world):
    """The fetch holds only fetch.lock during its transfer: a boot's
    mark-good (and pin, rollback) completes while a download crawls."""
    publisher, device, first, server = world
    second = publisher.release()
    device.run("fetch")
    assert device.boot() == second
    publisher.release(big=8_000_000)
    server.restart(kbytes_per_second=200)
    proc = _fetch_in_background(device)
    try:
        assert _wait_for_transfer(server, proc), "the transfer never started"
        done = device.run("mark-good")
        assert done.returncode == 0 and proc.poll() is None, "the fetch ended too soon"
        assert device.status()["last_good"] == second
        again = device.run("fetch", check=False)
        assert again.returncode == 8 and "a fetch is already running" in again.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_rollback_cancels_a_trial_that_was_never_booted(world):
    publisher, device, first, _ = world
    second = publisher.release()
    device.run("fetch")
    assert device.status()["trial"]["commit"] == second
    out = device.run("rollback").stdout
    assert out.startswith(f"cancelled the trial {second[:12]}; next boot: last good {first[:12]}")
    st = device.status()
    assert st["trial"] is None and st["hold"] and st["next_boot"]["commit"] == first
    assert device.boot() == first
    assert json.loads(device.run("log", "--json").stdout)[-1]["action"] == "rollback"


def test_status_text_says_where_the_device_stands(world):
    publisher, device, first, _ = world
    second = publisher.release()
    device.run("fetch")
    device.boot()
    # what the boot path's mount records about its FUSE back end
    with open(os.path.join(device.run_dir, "mount.json"), "w") as f:
        json.dump({"backend": "libfuse3", "binding": "mfusepy 3.1.1",
                   "library": "libfuse 3.14", "commit": second}, f)
    lines = dict(line.split(":", 1) for line in device.run("status").stdout.splitlines())
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    assert lines["booted"].startswith(f"{second[:12]} (trial, try 1 of 2)")
    assert lines["trial"].startswith(f"{second[:12]}, 1 of 2 tries left")
    assert "signature: good ssh signature by release@example.org" in lines["trial"]
    assert lines["last good"].startswith(first[:12])
    assert lines["previous good"] == "-"
    assert lines["served by"] == "libfuse3 (mfusepy 3.1.1, libfuse 3.14)"
    assert device.status()["mount"]["backend"] == "libfuse3"
    assert lines["last fetch"].endswith(f"pinned {second[:12]} from stable as the next "
                                        "boot's trial (2 tries; " + lines["trial"].split(
                                            "signature: ", 1)[1] + ")")


def test_a_damaged_state_file_is_reported_not_a_traceback(world):
    publisher, device, first, _ = world
    with open(os.path.join(device.state_dir, "state.json"), "w") as f:
        f.write('{"version": 1, "last_good": "../../etc/passwd"}')
    text = device.run("status").stdout
    assert "UNREADABLE" in text and "last_good is not a full commit id" in text
    assert device.status()["state_error"].endswith("last_good is not a full commit id")
    # the boot does not stop: the refs name the last good release
    proc = device.run("boot-select", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert proc.stdout.strip() == first
    assert "last_good is not a full commit id; choosing from refs/gitroot/*" in proc.stderr
