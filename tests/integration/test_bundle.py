"""Static hosting: ``gitroot bundle`` and ``fetch_static`` against a real lighttpd.

Releases are made with ``gitroot commit`` (a subprocess) from small
generated trees; the device is a separate bare repository.  Every fetch is
checked for what it must not do as much as for what it does: no ref but
``refs/gitroot/incoming/BRANCH`` moves, and a failed fetch leaves even that
one as it was.
"""

import json
import lzma
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import gitroot_cmd
from gitroot.device.static import fetch_static
from gitroot.git.bundle import (BundleEntry, StaticIndex, choose_chain, parse_bundle_header,
                                parse_index)
from gitroot.errors import FetchError

BRANCH = "stable"
INCOMING = f"refs/gitroot/incoming/{BRANCH}"


# -- helpers ---------------------------------------------------------------

def git(repo, *args, check=True) -> str:
    proc = subprocess.run(["git", "--git-dir", str(repo), *map(str, args)],
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(map(str, args))}: {proc.stderr}")
    return proc.stdout.strip()


def refs(repo) -> dict:
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ", 1) for line in out.splitlines())


def write_tree(root: Path, version: int, big: int = 0) -> None:
    """A small root tree; each version changes, adds and removes a little."""
    rng = random.Random(version)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "os-release").write_text(f"NAME=test\nVERSION_ID={version}\n")
    for n in range(20):
        text = "".join(f"line {i} of file {n}\n" for i in range(200))
        (root / "usr" / f"doc{n}.txt").write_text(text + f"version {version}\n"
                                                  if n % 5 == 0 else text)
    (root / "usr" / "bin" / f"tool{version}").write_bytes(rng.randbytes(20_000)
                                                         if hasattr(rng, "randbytes")
                                                         else os.urandom(20_000))
    old = root / "usr" / "bin" / f"tool{version - 2}"
    if old.exists():
        old.unlink()
    os.symlink(f"tool{version}", root / "usr" / "bin" / f"link{version}")
    if big:
        (root / "var").mkdir(exist_ok=True)
        (root / "var" / "blob.bin").write_bytes(os.urandom(big))


@pytest.fixture
def releases(tmp_path):
    """A source repository with releases v1, v2, v3 on BRANCH; {name: commit}."""
    repo = tmp_path / "source.git"
    tree = tmp_path / "tree"
    commits = {}
    for version in (1, 2, 3):
        write_tree(tree, version)
        commits[f"v{version}"] = gitroot_cmd("commit", tree, "--repo", repo, "--branch",
                                             BRANCH, "-m", f"v{version}").stdout.strip()
    return repo, commits


def device_with(tmp_path, source, commit=None) -> Path:
    """A device repository holding *commit* (pinned under refs/gitroot/pinned)."""
    device = tmp_path / "device.git"
    subprocess.run(["git", "init", "-q", "--bare", str(device)], check=True)
    if commit:
        git(device, "fetch", "-q", str(source), f"{commit}:refs/gitroot/pinned")
    return device


def publish(source, server_root, *spans):
    """``gitroot bundle --publish`` each (from, to) span; the last sets the head."""
    for start, end in spans:
        args = ["bundle", "--repo", source, "--to", end, "--branch", BRANCH,
                "--publish", server_root]
        if start:
            args += ["--from", start]
        gitroot_cmd(*args)
    return json.loads((Path(server_root) / "index.json").read_text())


def tree_of(repo, commit) -> str:
    return git(repo, "rev-parse", f"{commit}^{{tree}}")


def assert_refused_changing_nothing(url, device, have, workdir, match):
    """fetch_static raises a FetchError matching *match* and no ref moves."""
    before = refs(device)
    with pytest.raises(FetchError, match=match):
        fetch_static(url, device, BRANCH, have, str(workdir))
    assert refs(device) == before


def assert_fetched(device, source, commit, before):
    assert git(device, "rev-parse", INCOMING) == commit
    assert tree_of(device, commit) == tree_of(source, commit)
    git(device, "fsck", "--strict", "--no-dangling")
    after = refs(device)
    changed = {r for r in set(before) | set(after) if before.get(r) != after.get(r)}
    assert changed <= {INCOMING}, changed


def access_log(server) -> str:
    """The server's access log; stops the server, which is when lighttpd is
    sure to have written it."""
    server.stop()
    path = server.workdir / "access.log"
    return path.read_text() if path.exists() else ""


# -- fetching from a real static server ------------------------------------

def test_full_bundle_into_an_empty_repository(releases, static_http_server, tmp_path):
    source, commits = releases
    publish(source, static_http_server.document_root, (None, commits["v2"]))
    device = device_with(tmp_path, source)
    before = refs(device)
    got = fetch_static(static_http_server.url + "/", str(device), BRANCH, [],
                       str(tmp_path / "downloads"))
    assert got == commits["v2"]
    assert_fetched(device, source, got, before)
    assert os.listdir(tmp_path / "downloads") == []   # nothing left behind
    # stored zlib-compressed although the bundle carried it without zlib
    doc = git(device, "rev-parse", f"{got}:usr/doc7.txt")
    packs = list((device / "objects" / "pack").glob("*.idx"))
    assert len(packs) == 1
    listing = git(device, "verify-pack", "-v", packs[0])
    oid, kind, size, packed = next(line.split()[:4] for line in listing.splitlines()
                                   if line.startswith(doc))
    assert int(packed) < int(size) // 3, (size, packed)


def test_delta_bundle_is_chosen_over_the_full_one(releases, static_http_server, tmp_path):
    source, commits = releases
    index = publish(source, static_http_server.document_root,
                    (None, commits["v2"]), (commits["v1"], commits["v2"]))
    delta = next(b for b in index["bundles"] if b["from"])
    device = device_with(tmp_path, source, commits["v1"])
    before = refs(device)
    seen = []
    got = fetch_static(static_http_server.url + "/index.json", device, BRANCH,
                       [commits["v1"]], str(tmp_path / "dl"),
                       progress=lambda p: seen.append(p))
    assert got == commits["v2"]
    assert_fetched(device, source, got, before)
    assert {p.file for p in seen if p.phase == "download"} == {delta["file"]}
    assert "full" not in access_log(static_http_server)
    assert seen[-1].phase == "done"


def test_chain_of_two_deltas(releases, static_http_server, tmp_path):
    source, commits = releases
    index = publish(source, static_http_server.document_root,
                    (commits["v1"], commits["v2"]), (None, commits["v3"]),
                    (commits["v2"], commits["v3"]))
    assert index["heads"] == {BRANCH: commits["v3"]}
    device = device_with(tmp_path, source, commits["v1"])
    before = refs(device)
    files = []
    got = fetch_static(static_http_server.url, device, BRANCH, [commits["v1"], "0" * 40],
                       str(tmp_path / "dl"),
                       progress=lambda p: p.phase == "fetch" and files.append(p.file))
    assert got == commits["v3"]
    assert_fetched(device, source, got, before)
    assert len(files) == 2 and all("full" not in f for f in files)


def test_pygit2_repository_handle_and_up_to_date(releases, static_http_server, tmp_path):
    import pygit2

    source, commits = releases
    publish(source, static_http_server.document_root, (commits["v1"], commits["v2"]))
    device = device_with(tmp_path, source, commits["v2"])
    before = refs(device)
    got = fetch_static(static_http_server.url, pygit2.Repository(str(device)), BRANCH,
                       [commits["v2"]], str(tmp_path / "dl"))
    assert got == commits["v2"]
    assert_fetched(device, source, got, before)
    assert ".bundle.xz" not in access_log(static_http_server)   # nothing downloaded


def test_resume_after_the_server_is_killed(releases, static_http_server, tmp_path):
    source, commits = releases
    tree = tmp_path / "tree"
    write_tree(tree, 4, big=1_500_000)   # incompressible: the bundle stays ~1.5 MB
    v4 = gitroot_cmd("commit", tree, "--repo", source, "--branch", BRANCH).stdout.strip()
    index = publish(source, static_http_server.document_root, (commits["v3"], v4))
    size = index["bundles"][0]["size"]
    assert size > 1_000_000
    device = device_with(tmp_path, source, commits["v3"])
    before = refs(device)
    static_http_server.restart(kbytes_per_second=200)
    workdir = tmp_path / "dl"

    def kill_midway(progress):
        if progress.phase == "download" and progress.done > 300_000:
            static_http_server.kill()

    with pytest.raises(FetchError, match="interrupted"):
        fetch_static(static_http_server.url, device, BRANCH, [commits["v3"]], str(workdir),
                     progress=kill_midway)
    part = [p for p in workdir.iterdir() if p.name.endswith(".part")]
    assert len(part) == 1
    kept = part[0].stat().st_size
    assert 300_000 < kept < size
    assert refs(device) == before           # nothing moved

    static_http_server.start()               # same port, no throttle
    got = fetch_static(static_http_server.url, device, BRANCH, [commits["v3"]],
                       str(workdir))
    assert got == v4
    assert_fetched(device, source, got, before)
    assert '" 206 ' in access_log(static_http_server)   # it asked for the rest only
    assert list(workdir.iterdir()) == []


def test_corrupt_bundle_is_refused_and_nothing_moves(releases, static_http_server, tmp_path):
    source, commits = releases
    index = publish(source, static_http_server.document_root,
                    (commits["v1"], commits["v2"]))
    served = static_http_server.document_root / index["bundles"][0]["file"]
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served.write_bytes(bytes(data))
    device = device_with(tmp_path, source, commits["v1"])
    git(device, "update-ref", INCOMING, commits["v1"])   # an earlier incoming release
    assert_refused_changing_nothing(static_http_server.url, device, [commits["v1"]],
                                    tmp_path / "dl", "SHA-256")
    assert list((tmp_path / "dl").iterdir()) == []      # the bad download is gone
    git(device, "fsck", "--strict")


def test_oversized_response_is_discarded(releases, static_http_server, tmp_path):
    source, commits = releases
    index = publish(source, static_http_server.document_root,
                    (commits["v1"], commits["v2"]))
    served = static_http_server.document_root / index["bundles"][0]["file"]
    served.write_bytes(served.read_bytes() + b"\0" * 100_000)
    device = device_with(tmp_path, source, commits["v1"])
    assert_refused_changing_nothing(static_http_server.url, device, [commits["v1"]],
                                    tmp_path / "dl", "index says|more bytes")
    assert list((tmp_path / "dl").iterdir()) == []


def test_bundle_that_is_not_what_the_index_says(releases, static_http_server, tmp_path):
    """A correct checksum of the wrong bundle (an index claiming v1..v3 for a
    v1..v2 bundle) is refused before git sees it."""
    source, commits = releases
    root = static_http_server.document_root
    index = publish(source, root, (commits["v1"], commits["v2"]))
    index["bundles"][0]["to"] = commits["v3"]
    index["heads"][BRANCH] = commits["v3"]
    (root / "index.json").write_text(json.dumps(index))
    device = device_with(tmp_path, source, commits["v1"])
    assert_refused_changing_nothing(static_http_server.url, device, [commits["v1"]],
                                    tmp_path / "dl", "not what the index says")


def test_second_bundle_of_a_chain_fails_after_the_first_was_fetched(
        releases, static_http_server, tmp_path):
    """The first bundle is fetched into the incoming ref; the second fails in
    git (a garbage pack with the right checksum): the ref goes back."""
    source, commits = releases
    root = static_http_server.document_root
    index = publish(source, root, (commits["v1"], commits["v2"]),
                    (commits["v2"], commits["v3"]))
    second = index["bundles"][1]
    bad = (f"# v2 git bundle\n-{commits['v2']}\n{commits['v3']} refs/heads/{BRANCH}\n\n"
           ).encode() + b"PACK garbage"
    data = lzma.compress(bad, format=lzma.FORMAT_XZ)
    (root / second["file"]).write_bytes(data)
    import hashlib
    second["size"], second["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (root / "index.json").write_text(json.dumps(index))
    device = device_with(tmp_path, source, commits["v1"])
    assert_refused_changing_nothing(static_http_server.url, device, [commits["v1"]],
                                    tmp_path / "dl", "git refused")


@pytest.mark.parametrize("body, match", [
    (None, "HTTP 404"),
    (b"<html>not json", "not JSON"),
    (b'{"format": "gitroot-bundles/9", "heads": {}, "bundles": []}', "format"),
    (b"[]", "not a JSON object"),
    (b"{" + b" " * 5_000_000 + b"}", "allowed"),
], ids=["missing", "html", "format", "list", "huge"])
def test_index_missing_or_garbage(releases, static_http_server, tmp_path, body, match):
    source, commits = releases
    if body is not None:
        (static_http_server.document_root / "index.json").write_bytes(body)
    device = device_with(tmp_path, source, commits["v1"])
    assert_refused_changing_nothing(static_http_server.url, device, [commits["v1"]],
                                    tmp_path / "dl", match)


def test_unknown_branch_and_no_chain(releases, static_http_server, tmp_path):
    source, commits = releases
    publish(source, static_http_server.document_root, (commits["v2"], commits["v3"]))
    device = device_with(tmp_path, source, commits["v1"])
    with pytest.raises(FetchError, match="no branch 'testing'"):
        fetch_static(static_http_server.url, device, "testing", [commits["v1"]],
                     str(tmp_path / "dl"))
    with pytest.raises(FetchError, match="no bundle chain"):
        fetch_static(static_http_server.url, device, BRANCH, [commits["v1"]],
                     str(tmp_path / "dl"))


def test_server_down(releases, static_http_server, tmp_path):
    source, commits = releases
    device = device_with(tmp_path, source, commits["v1"])
    static_http_server.stop()
    with pytest.raises(FetchError, match="connection failed"):
        fetch_static(static_http_server.url, device, BRANCH, [commits["v1"]],
                     str(tmp_path / "dl"), timeout=5)


# -- the verb --------------------------------------------------------------

def test_bundle_file_is_a_git_bundle(releases, tmp_path):
    source, commits = releases
    out = tmp_path / "delta.bundle.xz"
    proc = gitroot_cmd("bundle", "--repo", source, "--from", commits["v1"], "--to", BRANCH,
                       "-o", out)
    assert str(out) in proc.stdout
    raw = tmp_path / "delta.bundle"
    raw.write_bytes(lzma.decompress(out.read_bytes()))
    header = parse_bundle_header(raw.read_bytes()[:4096])
    assert header.prerequisites == (commits["v1"],)
    assert header.refs == ((f"refs/heads/{BRANCH}", commits["v3"]),)
    # objects are stored without zlib (xz compresses better), even those the
    # importer had already packed zlib-compressed
    assert list((source / "objects" / "pack").glob("*.pack"))
    blob = git(source, "rev-parse", f"{commits['v3']}:usr/bin/tool3")
    content = subprocess.run(["git", "--git-dir", str(source), "cat-file", "blob", blob],
                             capture_output=True, check=True).stdout
    assert content[:1000] in raw.read_bytes()
    # git itself accepts it: verify against a repository with the prerequisite
    device = device_with(tmp_path, source, commits["v1"])
    subprocess.run(["git", "--git-dir", str(device), "bundle", "verify", str(raw)],
                   check=True, capture_output=True)


def test_index_is_rebuilt_from_the_directory(releases, tmp_path):
    source, commits = releases
    site = tmp_path / "site"
    site.mkdir()
    published = publish(source, site, (None, commits["v2"]), (commits["v2"], commits["v3"]))
    (site / "index.json").unlink()
    gitroot_cmd("bundle", "--index", site)
    rebuilt = json.loads((site / "index.json").read_text())
    assert rebuilt == published
    entry = rebuilt["bundles"][1]
    assert entry["from"] == commits["v2"] and entry["to"] == commits["v3"]
    assert entry["size"] == (site / entry["file"]).stat().st_size


@pytest.mark.parametrize("args, message", [
    (["--to", "HEAD~0"], "needs --repo"),
    (["--repo", "R", "--to", "x"], "-o FILE or --publish"),
    (["--index", "D", "--to", "x"], "rebuilds an index only"),
])
def test_usage_errors(args, message):
    proc = gitroot_cmd("bundle", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_commit_id_without_branch_is_a_usage_error(releases, tmp_path):
    source, commits = releases
    proc = gitroot_cmd("bundle", "--repo", source, "--to", commits["v2"], "-o",
                       tmp_path / "x.bundle.xz", check=False)
    assert proc.returncode == 2 and "--branch" in proc.stderr
    assert not (tmp_path / "x.bundle.xz").exists()


# -- pure parts ------------------------------------------------------------

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)


def entry(start, end, size):
    """A bundle named a-b (from A to B) or ful-c (full bundle of C)."""
    return BundleEntry(BRANCH, start, end, f"{start[0] if start else 'ful'}-{end[0]}",
                       size, "0" * 64)


@pytest.mark.parametrize("bundles, have, expected", [
    ([entry(None, C, 100), entry(A, B, 10), entry(B, C, 10)], [A], ["a-b", "b-c"]),
    ([entry(None, C, 15), entry(A, B, 10), entry(B, C, 10)], [A], ["ful-c"]),
    ([entry(None, C, 100), entry(A, B, 10), entry(B, C, 10)], [], ["ful-c"]),
    ([entry(A, C, 30), entry(A, B, 10), entry(B, C, 10)], [A], ["a-b", "b-c"]),
    ([entry(A, C, 20), entry(A, B, 10), entry(B, C, 10)], [A], ["a-c"]),   # fewer files
    ([entry(A, B, 10), entry(B, C, 10)], [B, A], ["b-c"]),
    ([entry(A, B, 10), entry(B, C, 10)], [C], []),
])
def test_choose_chain(bundles, have, expected):
    chain = choose_chain(StaticIndex({BRANCH: C}, tuple(bundles)), BRANCH, have)
    assert [b.file for b in chain] == expected


def test_choose_chain_without_a_way_there():
    index = StaticIndex({BRANCH: C}, (entry(A, B, 1), entry(D, C, 1)))
    with pytest.raises(FetchError, match="no bundle chain"):
        choose_chain(index, BRANCH, [A])


def good_index():
    return {"format": "gitroot-bundles/1", "heads": {BRANCH: B},
            "bundles": [{"branch": BRANCH, "from": A, "to": B, "file": "x.bundle.xz",
                         "size": 10, "sha256": "f" * 64}]}


@pytest.mark.parametrize("key, value, match", [
    ("file", "../etc/passwd", "plain file name"),
    ("file", "sub/x.bundle.xz", "plain file name"),
    ("file", ".hidden", "plain file name"),
    ("size", -1, "positive integer"),
    ("size", True, "positive integer"),
    ("size", "10", "positive integer"),
    ("sha256", "F" * 64, "64 hex"),
    ("from", "abc", "commit id or null"),
    ("to", None, "'to' must be"),
    ("branch", "", "'branch'"),
])
def test_parse_index_traps(key, value, match):
    doc = good_index()
    doc["bundles"][0][key] = value
    with pytest.raises(FetchError, match=match):
        parse_index(json.dumps(doc))


def test_parse_index_good_and_bad_head():
    assert parse_index(json.dumps(good_index())).heads == {BRANCH: B}
    doc = good_index()
    doc["heads"][BRANCH] = "HEAD"
    with pytest.raises(FetchError, match="not a commit id"):
        parse_index(json.dumps(doc))


@pytest.mark.parametrize("data, match", [
    (b"# v3 git bundle\n", "not a git bundle"),
    (b"# v2 git bundle\n" + A.encode() + b" refs/heads/x\n", "no end"),
    (b"# v2 git bundle\n-xyz\n" + A.encode() + b" refs/heads/x\n\n", "prerequisite"),
    (b"# v2 git bundle\n-" + A.encode() + b"\n\n", "no ref"),
    (b"# v2 git bundle\n" + A.encode() + b"\n\n", "bad ref line"),
])
def test_parse_bundle_header_traps(data, match):
    with pytest.raises(ValueError, match=match):
        parse_bundle_header(data)


def test_parse_bundle_header():
    data = (b"# v2 git bundle\n-" + A.encode() + b" a comment\n" + B.encode()
            + b" refs/heads/stable\n\nPACK")
    header = parse_bundle_header(data)
    assert header.prerequisites == (A,)
    assert header.refs == (("refs/heads/stable", B),)
    assert data[header.length:] == b"PACK"


def test_no_tmp_files_left_by_a_failed_bundle(releases, tmp_path):
    source, commits = releases
    out = tmp_path / "out"
    out.mkdir()
    proc = gitroot_cmd("bundle", "--repo", source, "--from", "nonexistent", "--to", BRANCH,
                       "-o", out / "x.bundle.xz", check=False)
    assert proc.returncode != 0 and "unknown revision" in proc.stderr
    assert list(out.iterdir()) == []
    shutil.rmtree(out)


# -- the whole path: gitroot fetch from a static directory -------------------

def test_gitroot_fetch_from_a_static_directory(tmp_path, static_http_server):
    """Signed releases published with --publish reach a device through
    ``gitroot fetch`` (the fetcher's checks and pins, docs/operations.md)."""
    from tests.lifecycle_support import Device, Publisher

    publisher = Publisher(tmp_path, static_http_server)
    site = static_http_server.document_root
    first = publisher.release()
    gitroot_cmd("bundle", "--repo", publisher.repo, "--to", BRANCH, "--publish", site)
    device = Device(tmp_path, publisher, remotes=[static_http_server.url + "/"])
    assert device.run("fetch").stdout.startswith("pinned:")
    assert device.boot() == first
    device.run("mark-good")

    second = publisher.release(extra_files=5)
    gitroot_cmd("bundle", "--repo", publisher.repo, "--from", first, "--to", BRANCH,
                "--publish", site)
    assert device.run("fetch").stdout.startswith("pinned:")
    assert device.status()["trial"]["commit"] == second
    assert tree_of(device.repo, second) == tree_of(publisher.repo, second)
    delta = f"{BRANCH}-{first[:12]}-{second[:12]}.bundle.xz"
    log_lines = access_log(static_http_server).splitlines()
    assert sum(delta in line for line in log_lines) == 1
    assert sum("full" in line for line in log_lines) == 1   # the first fetch only
    git(device.repo, "fsck", "--strict", "--no-dangling")
