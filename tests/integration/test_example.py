"""The README's example (``bash .ci/example``, which runs
``examples/lifecycle.sh``) walks the whole life of a release; here each of
its steps is checked by what it printed and by what it left behind, not
only by its exit status.  It runs with this interpreter, so on both
library sets.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest

from tests.conftest import REPO_ROOT, fuse_available, gitroot_cmd
from tests.sample_tree import snapshot

EXAMPLE = os.path.join(REPO_ROOT, "examples", "lifecycle.sh")

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not fuse_available(), reason="needs root, /dev/fuse and fusermount"),
    pytest.mark.skipif(shutil.which("lighttpd") is None and
                       not os.path.exists("/usr/sbin/lighttpd"),
                       reason="needs lighttpd (apt-get install lighttpd)"),
]

Step = Tuple[str, str]          # (command as printed, its output)


def chapters(transcript: str) -> Dict[int, List[Step]]:
    """{chapter number: [(command, output), ...]} from the example's output."""
    out: Dict[int, List[Step]] = {}
    number = 0
    for line in transcript.splitlines():
        heading = re.match(r"== (\d+)\. ", line)
        if heading:
            number = int(heading.group(1))
            out[number] = []
        elif line.startswith("$ "):
            out[number].append((line[2:], ""))
        elif line.startswith("    ") and number in out and out[number]:
            command, output = out[number][-1]
            out[number][-1] = (command, output + line[4:] + "\n")
    return out


def output_of(steps: List[Step], command: str, nth: int = 0) -> str:
    found = [output for cmd, output in steps if cmd == command]
    assert len(found) > nth, f"no {command!r} in {[cmd for cmd, _ in steps]}"
    return found[nth]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    work = tmp_path_factory.mktemp("example") / "work"
    proc = subprocess.run(["bash", EXAMPLE, str(work)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable), timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stderr == ""            # every command's output is part of the story
    ids = {name: (work / f"{name}.id").read_text().strip()
           for name in ("release-1", "release-2", "release-3", "release-3-forged")}
    return work, chapters(proc.stdout), ids, proc.stdout


def device(work, *args):
    env = dict(os.environ, GITROOT_CONFIG=str(work / "device/gitroot.yml"),
               GITROOT_CMDLINE="root=/dev/vda ro quiet",
               GITROOT_RUN_DIR=str(work / "device/run"))
    return gitroot_cmd(*args, env=env)


def test_every_command_is_shown_with_its_output(example):
    work, story, ids, transcript = example
    assert sorted(story) == list(range(1, 11))
    for number, steps in story.items():
        assert steps, f"chapter {number} runs no command"
    # the commands are printed as one would type them
    assert ("gitroot commit publisher/rootfs-1 --repo srv/git/os.git --branch stable "
            "-m 'release 1' --sign-key publisher/release-key") in [c for c, _ in story[2]]
    assert transcript.rstrip().endswith(f"release 1 ({ids['release-1'][:12]}) again; "
                                        f"everything is in {work}")


def test_release_one_is_signed_published_and_becomes_last_good(example):
    work, story, ids, _ = example
    r1 = ids["release-1"]
    commit = [out for cmd, out in story[2] if cmd.startswith("gitroot commit")][0]
    assert commit.splitlines()[-1] == r1
    assert f"{r1[:7]} release 1 (signature: G release@example.org)" in \
        [out for cmd, out in story[2] if cmd.startswith("git ")][0]
    published = story[3]
    assert f"{r1}\trefs/heads/stable" in [out for cmd, out in published
                                          if cmd.startswith("git ls-remote")][0]
    assert f"stable full {r1[:12]}" in [out for cmd, out in published
                                        if cmd.startswith("gitroot bundle")][0]
    provisioning = story[4]
    assert output_of(provisioning, "gitroot fetch").splitlines()[-1].startswith(
        f"pinned: pinned {r1[:12]} from stable")
    assert output_of(provisioning, "gitroot boot-select").strip() == r1
    status = output_of(provisioning, "gitroot status")
    assert f"last good:     {r1[:12]}; signature: good ssh signature by " \
           "release@example.org" in status


def test_release_two_comes_from_the_static_directory_as_a_trial(example):
    work, story, ids, _ = example
    r1, r2 = ids["release-1"], ids["release-2"]
    index = json.loads(output_of(story[5], "cat srv/www/releases/index.json"))
    assert index["heads"] == {"stable": r2}
    assert [(b["from"], b["to"]) for b in index["bundles"]] == [(None, r1), (r1, r2)]
    steps = story[6]
    fetch = [out for cmd, out in steps if cmd.startswith("gitroot fetch --from http://127.0.0.1:")]
    assert len(fetch) == 1
    assert "1 bundle(s)" in fetch[0]                 # the upgrade, not the full bundle
    assert fetch[0].splitlines()[-1].startswith(f"pinned: pinned {r2[:12]} from stable")
    status = output_of(steps, "gitroot status")
    assert f"trial:         {r2[:12]}, 2 of 2 tries left" in status
    assert f"next boot:     {r2[:12]} (trial" in status
    # what is pending, from the release trees themselves
    old = set(snapshot(str(work / "publisher/rootfs-1")))
    new = set(snapshot(str(work / "publisher/rootfs-2")))
    added, removed = len(new - old), len(old - new)
    stat = output_of(steps, "gitroot diff --stat").strip()
    match = re.fullmatch(rf"{r1[:12]}\.\.{r2[:12]}: (\d+) added, (\d+) changed, (\d+) removed; "
                         r"\d+ bytes", stat)
    assert match, stat
    assert (int(match.group(1)), int(match.group(3))) == (added, removed)
    assert int(match.group(2)) >= 1                  # /etc/os-release at least
    assert f"pending:       {match.group(1)} added, {match.group(2)} changed, " \
           f"{match.group(3)} removed" in status
    # the trial's kernel is installed for the boot loader
    boot = work / "device/boot/gitroot"
    assert (boot / r2 / "vmlinuz").read_text() == "vmlinuz of release 2\n"
    assert os.readlink(boot / "trial") == r2


def test_the_trial_is_mounted_and_matches_its_source_entry_by_entry(example):
    work, story, ids, _ = example
    steps = story[7]
    compared = output_of(steps, "sample_tree compare publisher/rootfs-2 device/mnt")
    entries = len(snapshot(str(work / "publisher/rootfs-2")))
    assert compared.startswith(f"device/mnt matches publisher/rootfs-2: {entries} entries")
    listing = output_of(steps, "ls -l device/mnt/bin device/mnt/boot")
    assert re.search(r"^-rwsr-xr-x 1 root root \d+ .* su$", listing, re.M)
    assert "vmlinuz-6.12.2-amd64" in listing
    # unmounted at the end of the chapter
    with open("/proc/self/mounts") as mounts:
        assert str(work / "device/mnt") not in mounts.read()


def test_the_trial_is_booted_and_marked_good(example):
    work, story, ids, _ = example
    r1, r2 = ids["release-1"], ids["release-2"]
    steps = story[8]
    assert output_of(steps, "gitroot boot-select").strip() == r2
    status = output_of(steps, "gitroot status")
    assert f"last good:     {r2[:12]}" in status
    assert f"previous good: {r1[:12]}" in status
    assert "trial:         none" in status


def test_the_tampered_release_is_refused_with_its_reason(example):
    work, story, ids, _ = example
    r2, r3, forged = ids["release-2"], ids["release-3"], ids["release-3-forged"]
    assert forged != r3
    steps = story[9]
    assert f"{forged[:7]} release 3 (signature: B )" in \
        [out for cmd, out in steps if cmd.startswith("git ")][0]
    refusal = output_of(steps, "gitroot fetch")
    assert f"commit {forged}: SSH signature by" in refusal
    assert "does not match the signed content" in refusal
    assert "(exit status 22)" in refusal
    status = output_of(steps, "gitroot status")
    assert re.search(rf"last fetch: .*: refused: commit {forged}: .*does not match the "
                     "signed content", status)
    assert f"last good:     {r2[:12]}" in status and "trial:         none" in status


def test_rollback_goes_back_to_release_one(example):
    work, story, ids, _ = example
    r1, r2 = ids["release-1"], ids["release-2"]
    steps = story[10]
    assert f"previous good release {r1[:12]}" in output_of(steps, "gitroot rollback")
    assert output_of(steps, "gitroot boot-select").strip() == r1
    # the device's own record, read afresh
    status = json.loads(device(work, "status", "--json").stdout)
    assert status["booted"]["commit"] == r1
    assert (status["last_good"], status["previous_good"]) == (r1, r2)
    assert status["trial"] is None and status["hold"]
    assert status["last_fetch"]["result"] == "refused"
    history = [(h["action"], h["commit"]) for h in json.loads(device(work, "log", "--json").stdout)]
    assert history == [("trial", r1), ("try", r1), ("good", r1),
                       ("trial", r2), ("try", r2), ("good", r2),
                       ("rollback", r1), ("try", r1), ("good", r1)]


def test_the_example_leaves_no_server_running(example):
    work, _, _, _ = example
    port = int(re.search(r"^server\.port = (\d+)$",
                         (work / "srv/lighttpd.conf").read_text(), re.M).group(1))
    with socket.socket() as client:
        assert client.connect_ex(("127.0.0.1", port)) != 0, f"still listening on {port}"
