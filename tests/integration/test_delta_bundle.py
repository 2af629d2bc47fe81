"""Delta bundles (per-file deltas, docs/server.md) and decompression bounds,
against a real lighttpd on 127.0.0.1.

A device that applies a delta bundle must end with exactly the objects a
device that ran ``git fetch`` has; a delta whose result does not hash to
the id it names, or that needs a base the device lacks, is refused with
nothing written; a bundle that inflates past what the index declares is
stopped as soon as it does.
"""

import hashlib
import json
import lzma
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import gitroot_cmd
from gitroot.device.static import UNPACKED_MARGIN, fetch_static
from gitroot.errors import FetchError
from gitroot.git.bundle import DELTA_SIGNATURE, parse_bundle_header
from gitroot.git.filedelta import RECORD_HEAD, iter_records

BRANCH = "stable"
INCOMING = f"refs/gitroot/incoming/{BRANCH}"

pytestmark = pytest.mark.skipif(shutil.which("bsdiff") is None,
                                reason="bsdiff is not installed (bash .ci/setup installs it)")


def git(repo, *args) -> str:
    proc = subprocess.run(["git", "--git-dir", str(repo), *map(str, args)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout.strip()


def refs(repo) -> dict:
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ", 1) for line in out.splitlines())


def objects(repo) -> set:
    return set(git(repo, "cat-file", "--batch-all-objects",
                   "--batch-check=%(objectname) %(objecttype)").splitlines())


def machine_code(rng: random.Random, size: int) -> bytes:
    """Bytes like an executable's: a small alphabet of repeated instructions."""
    ops = [bytes(rng.getrandbits(8) for _ in range(rng.randint(2, 7))) for _ in range(200)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(ops)
        if rng.random() < 0.2:
            out += rng.getrandbits(32).to_bytes(4, "little")
    return bytes(out[:size])


def program(seed: int, size: int, rebuilt: bool = False) -> bytes:
    """An executable: instructions, a third of them with a 4-byte address.
    *rebuilt*: the next build, 16 bytes of code inserted early on, so that
    every address past them shifts by 16 -- the change bsdiff is made for,
    and one that a plain LZ match of old and new captures badly."""
    rng = random.Random(seed)
    ops = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    insert_at = size // 10
    out = bytearray()
    while len(out) < size:
        if rebuilt and 0 <= insert_at <= len(out):
            out += b"\x90" * 16
            insert_at = -1
        out += rng.choice(ops)
        if rng.random() < 0.35:
            address = rng.randrange(size)
            if rebuilt and address > size // 10:
                address += 16
            out += address.to_bytes(4, "little")
    return bytes(out)


def write_v1(root: Path) -> None:
    for sub in ("usr/bin", "usr/lib", "etc", "var/lib"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/tool").write_bytes(program(10, 300_000))
    (root / "usr/lib/libthing.so").write_bytes(program(11, 200_000))
    (root / "etc/services").write_text("".join(f"svc{i} {i}/tcp\n" for i in range(4000)))
    (root / "etc/mode-only").write_text("the same bytes, another mode\n" * 100)
    (root / "etc/old-name").write_text("renamed without a change\n" * 100)
    (root / "etc/goes-away").write_text("deleted in v2\n" * 100)
    (root / "var/lib/shrinks").write_text("this file becomes empty\n" * 200)
    (root / "var/lib/status").write_text("".join(f"Package: p{i}\nVersion: 1\n\n"
                                                 for i in range(800)))
    os.symlink("tool", root / "usr/bin/alias")


def write_v2(root: Path) -> None:
    """Every kind of change from v1: binary and text content, mode only, new,
    deleted, renamed, shrunk to zero, a symlink retargeted."""
    rng = random.Random(2)
    (root / "usr/bin/tool").write_bytes(program(10, 300_000, rebuilt=True))
    lib = root / "usr/lib/libthing.so"
    lib.write_bytes(program(11, 200_000, rebuilt=True))
    os.chmod(lib, 0o755)                                   # content and mode
    services = root / "etc/services"
    services.write_text(services.read_text().replace("svc17 ", "service17 ") + "new 1/udp\n")
    os.chmod(root / "etc/mode-only", 0o600)
    (root / "etc/old-name").rename(root / "etc/new-name")
    (root / "etc/goes-away").unlink()
    (root / "var/lib/shrinks").write_bytes(b"")
    status = root / "var/lib/status"
    status.write_text(status.read_text().replace("Version: 1\n", "Version: 2\n", 50))
    (root / "usr/bin/brand-new").write_bytes(machine_code(rng, 50_000))
    (root / "usr/bin/alias").unlink()
    os.symlink("brand-new", root / "usr/bin/alias")


@pytest.fixture
def two_releases(tmp_path):
    """(source repository, v1, v2), made with ``gitroot commit``."""
    repo = tmp_path / "source.git"
    tree = tmp_path / "tree"
    write_v1(tree)
    v1 = gitroot_cmd("commit", tree, "--repo", repo, "--branch", BRANCH,
                     "-m", "v1").stdout.strip()
    write_v2(tree)
    v2 = gitroot_cmd("commit", tree, "--repo", repo, "--branch", BRANCH,
                     "-m", "v2").stdout.strip()
    return repo, v1, v2


def device_with(path: Path, source: Path, commit: str) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    git(path, "fetch", "-q", str(source), f"{commit}:refs/gitroot/pinned")
    return path


def publish_delta_only(source, root: Path, start: str, end: str) -> dict:
    """A directory whose index offers only the delta bundle START..END."""
    name = f"{BRANCH}-{start[:12]}-{end[:12]}.delta.xz"
    gitroot_cmd("bundle", "--repo", source, "--from", start, "--to", end, "--branch",
                BRANCH, "--delta", "-o", root / name)
    gitroot_cmd("bundle", "--index", root)
    index = json.loads((root / "index.json").read_text())
    assert index["bundles"] == [] and len(index["delta-bundles"]) == 1
    return index


def unpack(path: Path) -> bytes:
    return lzma.decompress(path.read_bytes())


def records_of(data: bytes) -> list:
    header = parse_bundle_header(data)
    body = memoryview(data)[header.length:]
    position = 0

    def read(n):
        nonlocal position
        chunk = bytes(body[position:position + n])
        position += n
        return chunk

    return list(iter_records(read))


def republish(root: Path, index: dict, entry: dict, data: bytes) -> None:
    """Serve *data* (uncompressed) as *entry*'s file, the index matching it."""
    packed = lzma.compress(data, format=lzma.FORMAT_XZ)
    (root / entry["file"]).write_bytes(packed)
    entry.update(size=len(packed), sha256=hashlib.sha256(packed).hexdigest(),
                 unpacked=len(data))
    (root / "index.json").write_text(json.dumps(index))


# -- round trip --------------------------------------------------------------

def test_delta_bundle_gives_exactly_what_git_fetch_gives(two_releases, static_http_server,
                                                         tmp_path):
    source, v1, v2 = two_releases
    root = static_http_server.document_root
    index = publish_delta_only(source, root, v1, v2)
    entry = index["delta-bundles"][0]

    # The bundle really carries per-file deltas, for the binary and the text
    # files changed in place, and not the blobs they rebuild.
    data = unpack(root / entry["file"])
    assert data.startswith(DELTA_SIGNATURE) and len(data) == entry["unpacked"]
    rebuilt = {d.target for d in records_of(data)}
    for path in ("usr/bin/tool", "usr/lib/libthing.so", "etc/services"):
        assert git(source, "rev-parse", f"{v2}:{path}") in rebuilt, path

    by_delta = device_with(tmp_path / "delta.git", source, v1)
    by_git = device_with(tmp_path / "git.git", source, v1)
    before = refs(by_delta)
    seen = []
    got = fetch_static(static_http_server.url, str(by_delta), BRANCH, [v1],
                       str(tmp_path / "dl"), progress=seen.append)
    assert got == v2
    assert {p.file for p in seen if p.phase == "fetch"} == {entry["file"]}
    git(by_git, "fetch", "-q", str(source), f"{v2}:{INCOMING}")

    assert objects(by_delta) == objects(by_git)
    assert git(by_delta, "rev-parse", INCOMING) == v2
    git(by_delta, "fsck", "--strict", "--no-dangling")
    changed = {r for r in set(before) | set(refs(by_delta))
               if before.get(r) != refs(by_delta).get(r)}
    assert changed == {INCOMING}
    assert list((tmp_path / "dl").iterdir()) == []


def test_publish_offers_both_formats_and_new_devices_take_the_smaller(
        two_releases, static_http_server, tmp_path):
    source, v1, v2 = two_releases
    root = static_http_server.document_root
    gitroot_cmd("bundle", "--repo", source, "--from", v1, "--to", BRANCH, "--delta",
                "--publish", root)
    index = json.loads((root / "index.json").read_text())
    # what devices older than delta bundles read is unchanged: the format
    # name, and under "bundles" only git bundles
    assert index["format"] == "gitroot-bundles/1"
    (git_entry,), (delta_entry,) = index["bundles"], index["delta-bundles"]
    assert unpack(root / git_entry["file"]).startswith(b"# v2 git bundle\n")
    assert delta_entry["size"] < git_entry["size"]
    assert git_entry["unpacked"] == len(unpack(root / git_entry["file"]))
    device = device_with(tmp_path / "device.git", source, v1)
    seen = []
    assert fetch_static(static_http_server.url, str(device), BRANCH, [v1],
                        str(tmp_path / "dl"), progress=seen.append) == v2
    assert {p.file for p in seen if p.phase == "download"} == {delta_entry["file"]}


def test_delta_needs_from(two_releases, tmp_path):
    source, v1, v2 = two_releases
    proc = gitroot_cmd("bundle", "--repo", source, "--to", v2, "--branch", BRANCH, "--delta",
                       "-o", tmp_path / "x.delta.xz", check=False)
    assert proc.returncode == 2 and "--delta needs --from" in proc.stderr
    assert not (tmp_path / "x.delta.xz").exists()


# -- refusals ----------------------------------------------------------------

def test_delta_that_rebuilds_the_wrong_object_is_refused(two_releases, static_http_server,
                                                         tmp_path):
    """One byte of a delta's extra stream changed: the rebuilt file does not
    hash to the id the commit names, and nothing reaches the repository."""
    source, v1, v2 = two_releases
    root = static_http_server.document_root
    index = publish_delta_only(source, root, v1, v2)
    entry = index["delta-bundles"][0]
    data = bytearray(unpack(root / entry["file"]))
    header = parse_bundle_header(bytes(data))
    # the first record's first diff byte (after tag, head and control stream)
    control_len = RECORD_HEAD.unpack_from(data, header.length + 1)[3]
    at = header.length + 1 + RECORD_HEAD.size + control_len
    data[at] ^= 0x55
    republish(root, index, entry, bytes(data))

    device = device_with(tmp_path / "device.git", source, v1)
    git(device, "update-ref", INCOMING, v1)
    before_refs, before_objects = refs(device), objects(device)
    with pytest.raises(FetchError, match="rebuilds an object whose id is"):
        fetch_static(static_http_server.url, str(device), BRANCH, [v1], str(tmp_path / "dl"))
    assert refs(device) == before_refs
    assert objects(device) == before_objects
    assert not list((tmp_path / "dl").glob("*.rebuilt*"))


def test_bundle_for_another_base_is_refused_before_anything_is_written(
        two_releases, static_http_server, tmp_path):
    """The index offers a v2..v3 delta bundle as starting from v1 (which the
    device has): its header names v2 and it is refused at the header, before
    the body is unpacked; one whose header was rewritten to say v1 still
    needs v2's blobs, and is refused before anything is stored."""
    source, v1, v2 = two_releases
    tree = tmp_path / "tree"
    (tree / "usr/bin/tool").write_bytes(program(12, 300_000))
    v3 = gitroot_cmd("commit", tree, "--repo", source, "--branch", BRANCH,
                     "-m", "v3").stdout.strip()
    root = static_http_server.document_root
    index = publish_delta_only(source, root, v2, v3)
    entry = index["delta-bundles"][0]
    entry["from"] = v1
    (root / "index.json").write_text(json.dumps(index))
    device = device_with(tmp_path / "device.git", source, v1)
    before_refs, before_objects = refs(device), objects(device)
    unpacked_sizes = []
    with pytest.raises(FetchError, match="not what the index says"):
        fetch_static(static_http_server.url, str(device), BRANCH, [v1], str(tmp_path / "dl"),
                     progress=lambda p: p.phase == "unpack" and unpacked_sizes.append(p.done))
    assert max(unpacked_sizes, default=0) < 1 << 16     # stopped at the header
    assert (refs(device), objects(device)) == (before_refs, before_objects)

    data = unpack(root / entry["file"]).replace(f"-{v2}".encode(), f"-{v1}".encode(), 1)
    republish(root, index, entry, data)
    with pytest.raises(FetchError, match="which this device does not have"):
        fetch_static(static_http_server.url, str(device), BRANCH, [v1], str(tmp_path / "dl"))
    assert (refs(device), objects(device)) == (before_refs, before_objects)


def test_gitroot_fetch_records_a_bad_delta_and_pins_nothing(tmp_path, static_http_server):
    """Through the fetcher: a signed release whose delta bundle is tampered
    with is not pinned, and status says why."""
    from tests.lifecycle_support import Device, Publisher

    publisher = Publisher(tmp_path, static_http_server)
    site = static_http_server.document_root
    first = publisher.release(big=200_000)
    gitroot_cmd("bundle", "--repo", publisher.repo, "--to", BRANCH, "--publish", site)
    device = Device(tmp_path, publisher, remotes=[static_http_server.url + "/"])
    assert device.run("fetch").stdout.startswith("pinned:")
    device.boot()
    device.run("mark-good")
    status_before = device.status()

    # the next release: the same tree but a few bytes of big.bin changed
    old = subprocess.run(["git", "--git-dir", publisher.repo, "cat-file", "blob",
                          f"{first}:big.bin"], capture_output=True, check=True).stdout
    src = Path(publisher.tree())
    (src / "big.bin").write_bytes(old[:5000] + b"changed" + old[5000:])
    second = gitroot_cmd("commit", src, "--repo", publisher.repo, "--branch", BRANCH,
                         "--sign-key", publisher.key, "-m", "second").stdout.strip()
    gitroot_cmd("bundle", "--repo", publisher.repo, "--from", first, "--to", BRANCH,
                "--delta", "--publish", site)
    index = json.loads((site / "index.json").read_text())
    entry = next(e for e in index["delta-bundles"] if e["to"] == second)
    data = bytearray(unpack(site / entry["file"]))
    header = parse_bundle_header(bytes(data))
    control_len = RECORD_HEAD.unpack_from(data, header.length + 1)[3]
    data[header.length + 1 + RECORD_HEAD.size + control_len] ^= 0x55
    index["bundles"] = [e for e in index["bundles"] if e["to"] != second]
    republish(site, index, entry, bytes(data))   # only the tampered bundle leads there

    proc = device.run("fetch", check=False)
    assert proc.returncode != 0
    assert "rebuilds an object whose id is" in proc.stderr
    status = device.status()
    assert status["trial"] == status_before["trial"]
    assert status["last_good"] == status_before["last_good"]
    assert status["last_fetch"]["result"] == "failed"
    assert "rebuilds an object whose id is" in status["last_fetch"]["message"]
    assert second not in json.dumps({k: v for k, v in status.items() if k != "last_fetch"})


# -- decompression bombs (issue 9) -------------------------------------------

ZEROS = 128 << 20


def zeros_after(prefix: bytes) -> bytes:
    """*prefix* then 128 MiB of zeros, xz-compressed (about 20 KB)."""
    compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=1)
    out = [compressor.compress(prefix)]
    block = bytes(1 << 20)
    for _ in range(ZEROS >> 20):
        out.append(compressor.compress(block))
    out.append(compressor.flush())
    return b"".join(out)


def serve_bomb(root: Path, v1: str, v2: str, packed: bytes, unpacked) -> None:
    entry = {"branch": BRANCH, "from": v1, "to": v2, "file": "bomb.bundle.xz",
             "size": len(packed), "sha256": hashlib.sha256(packed).hexdigest()}
    if unpacked is not None:
        entry["unpacked"] = unpacked
    (root / "bomb.bundle.xz").write_bytes(packed)
    (root / "index.json").write_text(json.dumps(
        {"format": "gitroot-bundles/1", "heads": {BRANCH: v2}, "bundles": [entry]}))


@pytest.mark.parametrize("declared", [None, 50_000])
def test_a_bomb_that_is_no_bundle_stops_at_its_first_bytes(
        two_releases, static_http_server, tmp_path, declared):
    source, v1, v2 = two_releases
    packed = zeros_after(b"")
    assert len(packed) < 100_000
    serve_bomb(static_http_server.document_root, v1, v2, packed, declared)
    device = device_with(tmp_path / "device.git", source, v1)
    before = refs(device), objects(device)
    sizes = []
    with pytest.raises(FetchError, match="not a git bundle"):
        fetch_static(static_http_server.url, str(device), BRANCH, [v1], str(tmp_path / "dl"),
                     progress=lambda p: p.phase == "unpack" and sizes.append(p.done))
    assert sizes == []                                   # nothing was written out
    assert (refs(device), objects(device)) == before
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [
        hashlib.sha256(packed).hexdigest() + ".bundle.xz"]   # only the small download


@pytest.mark.parametrize("declared", [None, 50_000])
def test_a_bomb_behind_a_good_header_stops_at_the_declared_size(
        two_releases, static_http_server, tmp_path, declared):
    """Declared: stopped one margin past it.  An index from before unpacked
    sizes: stopped at a fixed ratio to the download, far below the bomb."""
    source, v1, v2 = two_releases
    header = f"# v2 git bundle\n-{v1}\n{v2} refs/heads/{BRANCH}\n\n".encode()
    packed = zeros_after(header + b"PACK")
    serve_bomb(static_http_server.document_root, v1, v2, packed, declared)
    device = device_with(tmp_path / "device.git", source, v1)
    before = refs(device), objects(device)
    sizes = []
    with pytest.raises(FetchError, match="decompresses to more than"):
        fetch_static(static_http_server.url, str(device), BRANCH, [v1], str(tmp_path / "dl"),
                     progress=lambda p: p.phase == "unpack" and sizes.append(p.done))
    limit = (declared if declared else len(packed) * 1000) + UNPACKED_MARGIN
    assert max(sizes) <= limit < ZEROS // 4
    assert (refs(device), objects(device)) == before
    assert not [p for p in (tmp_path / "dl").iterdir() if not p.name.endswith(".xz")]


def test_a_device_without_the_base_commit_writes_nothing(two_releases, tmp_path):
    """Handed a v1..v2 delta bundle while lacking v1 (install_bundle, the step
    after the download): refused before anything is unpacked or stored."""
    from gitroot.device.static import install_bundle
    from gitroot.git.bundle import DELTA_FORMAT, BundleEntry

    source, v1, v2 = two_releases
    path = tmp_path / "v1-v2.delta.xz"
    gitroot_cmd("bundle", "--repo", source, "--from", v1, "--to", v2, "--branch", BRANCH,
                "--delta", "-o", path)
    device = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", str(device)], check=True)
    entry = BundleEntry(BRANCH, v1, v2, path.name, path.stat().st_size, "0" * 64,
                        None, DELTA_FORMAT)
    with pytest.raises(FetchError, match="which this device does not have; nothing was"):
        install_bundle(str(device), str(path), entry)
    assert objects(device) == set() and refs(device) == {}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("v1-v2")) == [
        path.name]                                       # nothing unpacked beside it


def test_an_interrupted_delta_bundle_download_resumes(two_releases, static_http_server,
                                                      tmp_path):
    """Half of the delta bundle already in ``.part`` (an earlier interrupted
    fetch): the device asks for the rest with Range, and the result is exact."""
    source, v1, v2 = two_releases
    root = static_http_server.document_root
    entry = publish_delta_only(source, root, v1, v2)["delta-bundles"][0]
    workdir = tmp_path / "dl"
    workdir.mkdir()
    data = (root / entry["file"]).read_bytes()
    (workdir / f"{entry['sha256']}.bundle.xz.part").write_bytes(data[:len(data) // 2])
    device = device_with(tmp_path / "device.git", source, v1)
    assert fetch_static(static_http_server.url, str(device), BRANCH, [v1], str(workdir)) == v2
    git(device, "fsck", "--strict", "--no-dangling")
    static_http_server.stop()
    log = (static_http_server.workdir / "access.log").read_text()
    assert '" 206 ' in log and entry["file"] in log
    assert list(workdir.iterdir()) == []
