#!/usr/bin/env python3
"""Benchmark the size of an upgrade: gitroot bundle vs git fetch vs OSTree static delta.

Usage (see docs/performance.md)::

    python3 bench/bundle.py            # both Debian workloads (as root: debootstrap, cached)
    python3 bench/bundle.py --workload packages   # bookworm minbase -> + less, curl,
                                                  # openssh-client
    python3 bench/bundle.py --workload upgrade    # bookworm minbase -> the same after
                                                  # apt-get upgrade (updates, security)
    python3 bench/bundle.py --quick    # two small generated trees (seconds; for CI)
    python3 bench/bundle.py --workload initrd     # a release that reruns update-initramfs:
                                                  # initrd compressed in the commit (before)
                                                  # vs uncompressed (after), one run
                                                  # (bench/initrd_release.py)

Each workload is an old and a new root tree; the run measures, in bytes,
what it costs to ship the new one:

* ``tar_zst`` / ``tar_zst_19``: the whole new tree as a tar, zstd -3 and -19
  --long (what a full image download costs);
* ``git_fetch``: the pack ``git fetch`` receives for the upgrade (``git
  pack-objects --revs --thin`` of ``NEW ^OLD`` with git's defaults, as
  upload-pack makes it for a client that has OLD);
* ``git_bundle``: ``git bundle create`` of ``OLD..NEW`` (git's defaults);
* ``xz_git_bundle`` / ``zstd_git_bundle``: ``xz -9e`` and ``zstd --ultra -22
  --long=27`` over a git bundle whose pack is not zlib-compressed
  (``pack.compression=0``, objects not reused as stored, git's delta
  defaults);
* ``gitroot_bundle``: ``gitroot bundle --from OLD --to NEW`` (what a static
  directory serves), and ``gitroot_full_bundle`` (``--to NEW`` alone);
* ``gitroot_delta_bundle``: ``gitroot bundle --from OLD --to NEW --delta``,
  files changed at the same path as per-file bsdiff deltas;
* ``ostree_delta``: ``ostree static-delta generate --from OLD --to NEW`` with
  OSTree's defaults, superblock plus parts; ``ostree_fallback``: the objects
  that delta leaves out ("fallback" objects over 4 MB, which the client then
  fetches one by one from the archive repository), so ``ostree_total`` is what
  an OSTree client really downloads; ``ostree_delta_inline``: the delta
  generated with everything inline (``--min-fallback-size`` above any file).

Both trees are prepared the same way for every tool: device nodes, fifos and
sockets are removed (OSTree cannot commit them; a booted system has devtmpfs),
and so are the ``.deb`` files debootstrap leaves in ``/var/cache/apt/archives``
(``apt-get clean``), unless ``--keep-apt-cache``.  In the ``packages``
workload the upgraded tree is a second ``debootstrap
--include=less,curl,openssh-client``, not ``apt-get install`` on the first:
the same packages arrive, but logs, ``ld.so.cache`` and dpkg's files differ
in detail from a real upgrade.  The ``upgrade`` workload is a real ``apt-get
upgrade`` of the minbase tree from bookworm-updates and bookworm-security
(``tests/rootfs.py: debian_upgraded``, cached); there both trees leave out
``/var/lib/apt/lists/*`` unless ``--keep-apt-lists``.

Beside the sizes, the device side of each gitroot bundle is timed: a bare
repository holding OLD unpacks the bundle, rebuilds files from their deltas
and checks their ids, ``git fetch``es it and rewrites the pack with zlib
(``gitroot.device.static.install_bundle`` and ``store_received``, what
``gitroot fetch`` runs after the download), in a child process whose CPU
time (user + system, its git children included) is printed; the result must
have NEW's tree.

It prints a table and writes everything as JSON
(``bench/results/bundle-MODE-TIMESTAMP.json`` or ``--json PATH``).
"""

import argparse
import json
import lzma
import os
import platform
import random
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time

from results_file import write_results  # bench/results_file.py, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

BRANCH = "stable"
UPGRADE_PACKAGES = "less,curl,openssh-client"

#: key, label
FIGURES = (
    ("tar_zst", "full rootfs tar.zst (zstd -3)"),
    ("tar_zst_19", "full rootfs tar.zst (zstd -19 --long)"),
    ("gitroot_full_bundle", "gitroot full bundle (--to NEW)"),
    ("git_fetch", "git fetch (pack sent, git defaults)"),
    ("git_bundle", "git bundle create OLD..NEW"),
    ("zstd_git_bundle", "zstd -22 --long over uncompressed git bundle"),
    ("xz_git_bundle", "xz -9e over uncompressed git bundle"),
    ("ostree_delta", "OSTree static delta (defaults)"),
    ("ostree_fallback", "  + OSTree fallback objects"),
    ("ostree_total", "  = OSTree client download"),
    ("ostree_delta_inline", "OSTree static delta, all inline"),
    ("gitroot_bundle", "gitroot bundle --from OLD --to NEW"),
    ("gitroot_delta_bundle", "gitroot delta bundle (--delta)"),
)
#: The bundles the targets are judged on, and the device-side timing of each.
OURS = (("gitroot_bundle", "apply_bundle"), ("gitroot_delta_bundle", "apply_delta_bundle"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    return subprocess.run(cmd, **kwargs)


def output(cmd, **kwargs) -> str:
    return run(cmd, stdout=subprocess.PIPE, **kwargs).stdout.decode().strip()


def piped_size(producer: list, consumer: list = None, **kwargs) -> int:
    """Bytes that *producer* (piped through *consumer*) writes to stdout."""
    first = subprocess.Popen(producer, stdout=subprocess.PIPE, **kwargs)
    source = first.stdout
    second = None
    if consumer:
        second = subprocess.Popen(consumer, stdin=first.stdout, stdout=subprocess.PIPE)
        first.stdout.close()
        source = second.stdout
    total = 0
    for chunk in iter(lambda: source.read(1 << 20), b""):
        total += len(chunk)
    for proc, cmd in ((first, producer), (second, consumer)):
        if proc is not None and proc.wait() != 0:
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
    return total


def dir_size(path: str) -> int:
    """Bytes of the regular files under *path*, each hard-linked file once."""
    seen = {}
    for directory, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode):
                seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


# -- the trees -------------------------------------------------------------

def prepare(source: str, dest: str, keep_apt_cache: bool, drop_apt_lists: bool = False) -> str:
    """A hard-linked copy of *source* as every tool will see it (see the docstring)."""
    run(["cp", "-al", source, dest])
    removed = 0
    if drop_apt_lists:
        lists = os.path.join(dest, "var/lib/apt/lists")
        for name in os.listdir(lists):
            path = os.path.join(lists, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    for directory, dirs, files in os.walk(dest):
        for name in files + dirs:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            special = not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))
            apt_cache = (not keep_apt_cache and stat.S_ISREG(mode) and name.endswith(".deb")
                         and directory.endswith("/var/cache/apt/archives"))
            if special or apt_cache:
                os.unlink(path)
                removed += 1
    log(f"  {dest}: {removed} device nodes, fifos, sockets"
        + ("" if keep_apt_cache else " and cached .deb files")
        + (", apt lists" if drop_apt_lists else "") + " left out")
    return dest


def make_quick_trees(work: str) -> tuple:
    """Two generated trees: text and binary-like files, an upgrade that adds,
    changes and removes a few."""
    rng = random.Random(5)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))))
             for _ in range(2000)]

    def text(n: int) -> str:
        return "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(n)) + "\n"

    def binary(n: int) -> bytes:
        # machine-code-like: a small alphabet of repeated "instructions"
        ops = [rng.randbytes(rng.randint(2, 7)) if hasattr(rng, "randbytes")
               else os.urandom(rng.randint(2, 7)) for _ in range(300)]
        out = bytearray()
        while len(out) < n:
            out += rng.choice(ops)
            if rng.random() < 0.2:
                out += rng.getrandbits(32).to_bytes(4, "little")
        return bytes(out[:n])

    old = os.path.join(work, "old")
    for sub in ("etc", "usr/bin", "usr/lib", "usr/share/doc", "var/lib/dpkg"):
        os.makedirs(os.path.join(old, sub))
    for n in range(200):
        with open(os.path.join(old, "usr/share/doc", f"doc{n}.txt"), "w") as f:
            f.write(text(60))
    for n in range(20):
        with open(os.path.join(old, "usr/bin", f"prog{n}"), "wb") as f:
            f.write(binary(60_000))
        os.chmod(os.path.join(old, "usr/bin", f"prog{n}"), 0o755)
    with open(os.path.join(old, "var/lib/dpkg/status"), "w") as f:
        f.write(text(500))
    with open(os.path.join(old, "etc/hostname"), "w") as f:
        f.write("quick\n")
    os.symlink("prog0", os.path.join(old, "usr/bin/default"))

    new = os.path.join(work, "new")
    run(["cp", "-a", old, new])
    for n in range(0, 200, 20):
        with open(os.path.join(new, "usr/share/doc", f"doc{n}.txt"), "a") as f:
            f.write(text(5))
    with open(os.path.join(new, "var/lib/dpkg/status"), "a") as f:
        f.write(text(40))
    for n in range(5):
        with open(os.path.join(new, "usr/lib", f"libnew{n}.so"), "wb") as f:
            f.write(binary(80_000))
    for n in range(30):
        with open(os.path.join(new, "usr/share/doc", f"new{n}.txt"), "w") as f:
            f.write(text(40))
    for n in (1, 2, 3):
        os.unlink(os.path.join(new, "usr/share/doc", f"doc{n}.txt"))
    return old, new


def debian_trees(work: str, keep_apt_cache: bool) -> tuple:
    from rootfs import debian_minbase

    log("debootstrap (cached): bookworm minbase, and minbase + " + UPGRADE_PACKAGES)
    base = debian_minbase("bookworm")
    upgraded = debian_minbase("bookworm", include=UPGRADE_PACKAGES)
    return (prepare(base, os.path.join(work, "old"), keep_apt_cache),
            prepare(upgraded, os.path.join(work, "new"), keep_apt_cache))


def upgrade_trees(work: str, keep_apt_cache: bool, keep_apt_lists: bool) -> tuple:
    """bookworm minbase, and the same tree after ``apt-get upgrade`` (tests/rootfs.py:
    debian_upgraded); returns (old, new, the packages upgraded).

    Unless *keep_apt_lists*, both trees leave out ``/var/lib/apt/lists/*``, as
    images are usually shipped (Debian's own container images do so): the
    package lists ``apt-get update`` brings are 35 MB of new text that says
    nothing about shipping an upgrade."""
    from rootfs import debian_minbase, debian_upgraded

    log("debootstrap (cached): bookworm minbase, and the same after apt-get upgrade")
    base = debian_minbase()
    upgraded = debian_upgraded()
    with open(upgraded + ".upgraded") as stream:
        packages = stream.read().split()
    drop = not keep_apt_lists
    return (prepare(base, os.path.join(work, "old"), keep_apt_cache, drop),
            prepare(upgraded, os.path.join(work, "new"), keep_apt_cache, drop), packages)


# -- the measurements ------------------------------------------------------

def gitroot(python: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return output([python, "-m", "gitroot", *args], env=env)


def measure(args, work: str, old: str, new: str) -> dict:
    sizes, seconds = {}, {}
    repo = os.path.join(work, "repo.git")
    started = time.monotonic()
    old_commit = gitroot(args.python, "commit", old, "--repo", repo, "--branch", BRANCH,
                         "-m", "old")
    new_commit = gitroot(args.python, "commit", new, "--repo", repo, "--branch", BRANCH,
                         "-m", "new")
    seconds["gitroot_commit"] = time.monotonic() - started
    git = ["git", "--git-dir", repo]

    def timed(key: str, func) -> None:
        started = time.monotonic()
        sizes[key] = func()
        seconds[key] = round(time.monotonic() - started, 2)
        log(f"  {key}: {sizes[key]} bytes ({seconds[key]} s)")

    log("full images")
    tar = ["tar", "--numeric-owner", "--xattrs", "-C", new, "-cf", "-", "."]
    timed("tar_zst", lambda: piped_size(tar, ["zstd", "-q", "-3", "-T0"]))
    timed("tar_zst_19", lambda: piped_size(tar, ["zstd", "-q", "-19", "--long=27", "-T0"]))
    full_path = os.path.join(work, "full.bundle.xz")
    timed("gitroot_full_bundle",
          lambda: (gitroot(args.python, "bundle", "--repo", repo, "--to", BRANCH, "-o",
                           full_path), os.path.getsize(full_path))[1])

    log("git")
    revs = f"{new_commit}\n^{old_commit}\n".encode()
    timed("git_fetch", lambda: len(run(
        git + ["pack-objects", "--revs", "--thin", "--stdout", "--delta-base-offset", "-q"],
        input=revs, stdout=subprocess.PIPE).stdout))
    plain = os.path.join(work, "plain.bundle")
    timed("git_bundle", lambda: (run(git + ["bundle", "create", "-q", plain,
                                            f"{old_commit}..{BRANCH}"]),
                                 os.path.getsize(plain))[1])
    raw = os.path.join(work, "uncompressed.bundle")
    uncompressed_bundle(repo, old_commit, new_commit, raw)
    timed("xz_git_bundle", lambda: piped_size(["xz", "-9e", "-T1", "-c", raw]))
    timed("zstd_git_bundle",
          lambda: piped_size(["zstd", "-q", "--ultra", "-22", "--long=27", "-c", raw]))

    log("gitroot bundle")
    delta_path = os.path.join(work, "delta.bundle.xz")
    timed("gitroot_bundle",
          lambda: (gitroot(args.python, "bundle", "--repo", repo, "--from", old_commit,
                           "--to", BRANCH, "-o", delta_path), os.path.getsize(delta_path))[1])
    verify_bundle(work, repo, old_commit, new_commit, delta_path)
    seconds["apply_bundle"] = apply_cpu(args.python, work, repo, old_commit, new_commit,
                                        delta_path, "git")

    log("gitroot delta bundle")
    per_file = os.path.join(work, "per-file.delta.xz")
    timed("gitroot_delta_bundle",
          lambda: (gitroot(args.python, "bundle", "--repo", repo, "--from", old_commit,
                           "--to", BRANCH, "--delta", "-o", per_file),
                   os.path.getsize(per_file))[1])
    deltas = delta_records(per_file)
    log(f"  {len(deltas)} files as deltas, rebuilding {sum(d[0] for d in deltas)} bytes "
        f"from {sum(d[1] for d in deltas)} bytes of delta streams")
    seconds["apply_delta_bundle"] = apply_cpu(args.python, work, repo, old_commit,
                                              new_commit, per_file, "delta")

    log("OSTree")
    ostree_version = ostree(work, old, new, sizes, seconds)
    sizes["ostree_total"] = sizes["ostree_delta"] + sizes["ostree_fallback"]
    return {"sizes": sizes, "seconds": seconds, "ostree_version": ostree_version,
            "delta_files": len(deltas),
            "commits": {"old": old_commit, "new": new_commit},
            "git_version": output(["git", "--version"]),
            "changed_files": len(output(git + ["diff", "--name-only", old_commit,
                                               new_commit]).splitlines()),
            "new_tree_bytes": dir_size(new)}


def uncompressed_bundle(repo: str, old_commit: str, new_commit: str, path: str) -> None:
    """What ``git -c pack.compression=0 bundle create OLD..NEW`` would write if
    git did not copy already-packed objects as stored (zlib-compressed): the
    same header and thin pack with git's default delta settings, every object
    stored without zlib."""
    with open(path, "wb") as out:
        out.write(f"# v2 git bundle\n-{old_commit}\n{new_commit} refs/heads/{BRANCH}\n\n"
                  .encode())
        out.flush()
        run(["git", "--git-dir", repo, "-c", "pack.compression=0", "pack-objects", "--revs",
             "--thin", "--stdout", "--delta-base-offset", "--no-reuse-object", "-q"],
            input=f"{new_commit}\n^{old_commit}\n".encode(), stdout=out)


def verify_bundle(work: str, repo: str, old_commit: str, new_commit: str,
                  delta_path: str) -> None:
    """The gitroot bundle really upgrades a repository holding OLD to NEW."""
    device = os.path.join(work, "device.git")
    run(["git", "init", "-q", "--bare", device])
    run(["git", "--git-dir", device, "fetch", "-q", repo, f"{old_commit}:refs/heads/old"])
    raw = os.path.join(work, "delta.bundle")
    with open(delta_path, "rb") as src, open(raw, "wb") as dst:
        dst.write(lzma.decompress(src.read()))
    run(["git", "--git-dir", device, "fetch", "-q", raw,
         f"refs/heads/{BRANCH}:refs/heads/new"])
    got = output(["git", "--git-dir", device, "rev-parse", "refs/heads/new^{tree}"])
    want = output(["git", "--git-dir", repo, "rev-parse", f"{new_commit}^{{tree}}"])
    if got != want:
        raise RuntimeError("the gitroot bundle did not reproduce the new tree")
    log("  the gitroot bundle upgrades OLD to NEW exactly (same tree id)")


def delta_records(path: str) -> list:
    """(rebuilt size, delta stream bytes) of each per-file delta in a delta bundle."""
    from gitroot.git.bundle import parse_bundle_header
    from gitroot.git.filedelta import iter_records

    with open(path, "rb") as stream:
        data = lzma.decompress(stream.read())
    body = memoryview(data)[parse_bundle_header(data).length:]
    at = 0

    def read(n: int) -> bytes:
        nonlocal at
        at += n
        return bytes(body[at - n:at])

    return [(d.size, len(d.control) + len(d.diff) + len(d.extra)) for d in iter_records(read)]


#: Run in a child process by apply_cpu: what a device does with a downloaded
#: bundle, and nothing else (no HTTP, no signature check).
APPLY_SCRIPT = """
import json, sys
from gitroot.device.static import _pack_files, install_bundle, store_received
from gitroot.git.bundle import BundleEntry
repo, path, entry = sys.argv[1], sys.argv[2], BundleEntry(**json.loads(sys.argv[3]))
before = _pack_files(repo)
install_bundle(repo, path, entry)
store_received(repo, before)
"""


def apply_cpu(python: str, work: str, repo: str, old_commit: str, new_commit: str,
              path: str, kind: str) -> float:
    """CPU seconds a device holding OLD spends applying the bundle at *path*."""
    device = os.path.join(work, f"device-{kind}.git")
    shutil.rmtree(device, ignore_errors=True)
    run(["git", "init", "-q", "--bare", device])
    run(["git", "--git-dir", device, "fetch", "-q", repo,
         f"{old_commit}:refs/gitroot/pinned"])
    run(["git", "--git-dir", device, "repack", "-adq"])
    copy = os.path.join(work, f"apply-{kind}.xz")
    shutil.copyfile(path, copy)
    entry = {"branch": BRANCH, "from_commit": old_commit, "to_commit": new_commit,
             "file": os.path.basename(path), "size": os.path.getsize(path),
             "sha256": "0" * 64, "unpacked": None, "format": kind}
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run([python, "-c", APPLY_SCRIPT, device, copy, json.dumps(entry)], env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2)
    got = output(["git", "--git-dir", device, "rev-parse",
                  f"refs/gitroot/incoming/{BRANCH}^{{tree}}"])
    want = output(["git", "--git-dir", repo, "rev-parse", f"{new_commit}^{{tree}}"])
    if got != want:
        raise RuntimeError(f"applying the {kind} bundle did not give the new tree")
    run(["git", "--git-dir", device, "fsck", "--strict", "--no-dangling"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(device)
    log(f"  the {kind} bundle applied on a device holding OLD gives NEW's tree "
        f"({cpu} s CPU)")
    return cpu


def ostree(work: str, old: str, new: str, sizes: dict, seconds: dict) -> str:
    repo = os.path.join(work, "ostree")
    base = ["ostree", f"--repo={repo}"]
    run(base + ["init", "--mode=archive"])
    old_commit = output(base + ["commit", f"--branch={BRANCH}", f"--tree=dir={old}"])
    new_commit = output(base + ["commit", f"--branch={BRANCH}", f"--tree=dir={new}"])
    delta_id = f"{old_commit}-{new_commit}"

    def generate(extra: list) -> dict:
        shutil.rmtree(os.path.join(repo, "deltas"), ignore_errors=True)
        started = time.monotonic()
        run(base + ["static-delta", "generate", f"--from={old_commit}",
                    f"--to={new_commit}", *extra], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        elapsed = round(time.monotonic() - started, 2)
        shown = output(base + ["static-delta", "show", delta_id])
        fallback = re.search(r"^Total Fallback Size: (\d+)", shown, re.M)
        return {"dir": dir_size(os.path.join(repo, "deltas")),
                "fallback": int(fallback.group(1)) if fallback else 0,
                "seconds": elapsed}

    default = generate([])
    sizes["ostree_delta"] = default["dir"]
    sizes["ostree_fallback"] = default["fallback"]
    seconds["ostree_delta"] = default["seconds"]
    log(f"  ostree_delta: {default['dir']} bytes + {default['fallback']} fallback")
    inline = generate(["--min-fallback-size=100000"])
    sizes["ostree_delta_inline"] = inline["dir"] + inline["fallback"]
    seconds["ostree_delta_inline"] = inline["seconds"]
    log(f"  ostree_delta_inline: {sizes['ostree_delta_inline']} bytes")
    version = output(["ostree", "--version"])
    match = re.search(r"Version: '([^']+)'", version)
    return match.group(1) if match else version.splitlines()[0]


# -- report ----------------------------------------------------------------

def report(result: dict) -> None:
    sizes, seconds = result["sizes"], result["seconds"]
    ref = sizes["tar_zst"]
    print(f"\nupgrade: {result['trees']}")
    if result.get("packages_upgraded"):
        print(f"packages upgraded: {', '.join(result['packages_upgraded'])}")
    print(f"{result['changed_files']} paths changed ({result['delta_files']} sent as per-file "
          f"deltas); new tree {result['new_tree_bytes'] / 1e6:.1f} MB; "
          f"OSTree {result['ostree_version']}, {result['git_version']}\n")
    print(f"{'':50} {'bytes':>12} {'MB':>8} {'% of tar.zst':>13}")
    for key, label in FIGURES:
        value = sizes[key]
        print(f"{label:50} {value:12d} {value / 1e6:8.2f} {100 * value / ref:12.1f}%")
    print("\ntarget: smaller than OSTree's static delta (device-side apply, CPU seconds)")
    for ours, apply_key in OURS:
        value = sizes[ours]
        for key in ("ostree_delta", "ostree_total", "ostree_delta_inline"):
            verdict = "MET " if value < sizes[key] else "MISS"
            print(f"  {verdict} {dict(FIGURES)[ours]} {value / 1e6:.2f} MB "
                  f"(apply {seconds[apply_key]:.2f} s CPU) vs "
                  f"{dict(FIGURES)[key].strip(' +=')} {sizes[key] / 1e6:.2f} MB "
                  f"({100 * (value - sizes[key]) / sizes[key]:+.1f}%)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="two small generated trees, no debootstrap (seconds)")
    parser.add_argument("--workload", choices=("packages", "upgrade", "both", "initrd"),
                        default="both",
                        help="Debian workload: + less, curl, openssh-client; apt-get "
                             "upgrade; or both (default); initrd: a release that reruns "
                             "update-initramfs, the initrd compressed vs uncompressed in "
                             "the commit")
    parser.add_argument("--keep-apt-cache", action="store_true",
                        help="keep the .deb files debootstrap leaves in /var/cache/apt")
    parser.add_argument("--keep-apt-lists", action="store_true",
                        help="upgrade workload: keep /var/lib/apt/lists in both trees")
    parser.add_argument("--json", help="write results here (default: bench/results/)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs gitroot (default: this one)")
    parser.add_argument("--workdir", default="/var/tmp",
                        help="where the trees and repositories go")
    args = parser.parse_args(argv)
    for tool in ("git", "ostree", "xz", "zstd", "tar", "bsdiff"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (bash .ci/setup installs it)")
    if args.quick:
        workloads = ["quick"]
    else:
        if os.geteuid() != 0:
            parser.error("must run as root (debootstrap, trees owned by root)")
        workloads = ["packages", "upgrade"] if args.workload == "both" else [args.workload]
    if workloads == ["initrd"]:
        import initrd_release     # bench/initrd_release.py, beside this script
        work = tempfile.mkdtemp(prefix="gitroot-bench-initrd-", dir=args.workdir)
        try:
            results = initrd_release.measure(args.python, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        initrd_release.report(results)
        write_results({"mode": "initrd", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "git_version": output(["git", "--version"]),
                       "python": args.python, "machine": platform.machine(),
                       "variants": results}, args.json, "bundle")
        return 0
    results = []
    for workload in workloads:
        work = tempfile.mkdtemp(prefix="gitroot-bench-bundle-", dir=args.workdir)
        packages = []
        try:
            if workload == "quick":
                old, new = make_quick_trees(work)
                trees = "generated tree (quick)"
            elif workload == "packages":
                old, new = debian_trees(work, args.keep_apt_cache)
                trees = (f"Debian bookworm minbase -> + {UPGRADE_PACKAGES.replace(',', ', ')} "
                         f"(two debootstraps"
                         f"{', apt cache kept' if args.keep_apt_cache else ''})")
            else:
                old, new, packages = upgrade_trees(work, args.keep_apt_cache,
                                                   args.keep_apt_lists)
                trees = ("Debian bookworm minbase -> the same after apt-get upgrade from "
                         "bookworm-updates and bookworm-security"
                         + (", apt lists kept" if args.keep_apt_lists else
                            ", apt lists left out of both"))
            result = measure(args, work, old, new)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result.update(workload=workload, trees=trees, packages_upgraded=packages)
        report(result)
        results.append(result)
    write_results({"mode": "quick" if args.quick else "debian",
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "git_version": output(["git", "--version"]),
                   "python": args.python, "machine": platform.machine(),
                   "workloads": results}, args.json, "bundle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
