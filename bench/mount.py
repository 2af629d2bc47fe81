#!/usr/bin/env python3
"""Benchmark ``gitroot mount`` against the native tree and a zstd squashfs.

Usage (as root; see docs/performance.md)::

    python3 bench/mount.py            # Debian bookworm minbase + python3 (minutes)
    python3 bench/mount.py --quick    # a generated tree of a few hundred files (~30 s)
    python3 bench/mount.py --scale    # mount time and memory at ~10,000 and ~100,000 entries

One run measures the same tree three ways, side by side and interleaved:
the plain directory (``native``), a zstd squashfs image through a loop
device (``squashfs``), and ``gitroot mount`` of the commit ``gitroot commit``
made of it (``gitroot``).  "Cold" means the file system was mounted afresh
(squashfs, gitroot) and ``sync; echo 3 > /proc/sys/vm/drop_caches`` ran just
before; "warm" means the same workload ran just before.

It prints a table of medians with ratios to squashfs and to native, checks
the targets of issue 3 against them, and writes everything as JSON
(``bench/results/mount-MODE-TIMESTAMP.json`` or ``--json PATH``).

The gitroot daemon runs under ``--python`` (default: this interpreter) with
this checkout on PYTHONPATH, so ``/usr/bin/python3 bench/mount.py`` measures
Debian's pygit2 and fusepy and ``.venv/bin/python bench/mount.py`` the
newest releases.
"""

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from results_file import write_results  # bench/results_file.py, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, REPO_ROOT)

SYSTEMS = ("native", "squashfs", "gitroot")
PY_START = ("python3 -c 'import json, email.parser, http.client, asyncio, argparse, "
            "logging, decimal'")
SH_START = "/bin/sh -c 'read -r x < /etc/hostname'"

#: (figure, what it is compared with, limit) -- the targets of issue 11,
#: judged for the "gitroot" column (what the mount picks)
TARGETS = (
    ("walk_cold", "squashfs", 2.0),
    ("walk_warm", "squashfs", 1.5),
    ("read_cold", "squashfs", 1.5),
    ("read_warm", "squashfs", 1.1),
    ("start_cold", "squashfs", 1.5),
    ("start_warm", "native", 1.1),
    ("mount_first_stat", None, 0.2),          # seconds
    ("daemon_private_mb", None, 30.0),        # MB
)

FIGURES = (
    # key, label, unit
    ("walk_cold", "metadata walk, cold", "s"),
    ("walk_warm", "metadata walk, warm", "s"),
    ("read_cold", "full read, cold", "s"),
    ("read_warm", "full read, warm", "s"),
    ("start_cold", "program start, cold", "s"),
    ("start_warm", "program start, warm", "s"),
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    return subprocess.run(cmd, **kwargs)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed_shell(command: str) -> tuple:
    """Run *command* under sh; (seconds, stdout stripped)."""
    start = time.perf_counter()
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command!r} exited {proc.returncode}: {proc.stderr.strip()}")
    return elapsed, proc.stdout.strip()


def is_mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def private_dirty_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise RuntimeError("no Private_Dirty in smaps_rollup")


# -- source trees ------------------------------------------------------------

def copy_with_libs(dest_root: str, program: str) -> None:
    """Copy *program* and the shared libraries ldd names into *dest_root*."""
    paths = [program]
    out = run(["ldd", program], capture_output=True, text=True).stdout
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("/"):
                paths.append(word)
    for path in paths:
        real = os.path.realpath(path)
        target = os.path.join(dest_root, path.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            shutil.copy2(real, target)


def make_quick_tree(dest: str, files: int = 300) -> str:
    """A few hundred files of mixed sizes, symlinks, and a runnable /bin/sh."""
    os.makedirs(dest)
    sh = shutil.which("dash") or "/bin/sh"
    copy_with_libs(dest, os.path.realpath(sh))
    os.makedirs(os.path.join(dest, "bin"), exist_ok=True)
    if not os.path.exists(os.path.join(dest, "bin/sh")):
        os.symlink(os.path.realpath(sh), os.path.join(dest, "bin/sh"))
    os.makedirs(os.path.join(dest, "etc"), exist_ok=True)
    with open(os.path.join(dest, "etc/hostname"), "w") as f:
        f.write("bench\n")
    seed = 1
    for i in range(files):
        d = os.path.join(dest, "usr/share/data", f"d{i % 17:02d}", f"e{i % 5}")
        os.makedirs(d, exist_ok=True)
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        size = (seed % 64) * 1024 + (seed % 997) if i % 10 else 1_500_000 + seed % 1000
        with open(os.path.join(d, f"f{i:04d}"), "wb") as f:
            block = (b"gitroot bench %d " % i) * 64
            f.write((block * (size // len(block) + 1))[:size])
        if i % 20 == 0:
            os.symlink(f"f{i:04d}", os.path.join(d, f"l{i:04d}"))
    return dest


def make_scale_tree(dest: str, entries: int) -> str:
    """About *entries* entries: 100 small files per directory, 20 dirs per level."""
    os.makedirs(dest)
    made = 0
    top = 0
    while made < entries:
        top_dir = os.path.join(dest, f"t{top:03d}")
        os.makedirs(top_dir)
        made += 1
        for sub in range(20):
            if made >= entries:
                break
            d = os.path.join(top_dir, f"s{sub:02d}")
            os.makedirs(d)
            made += 1
            for i in range(min(99, entries - made)):
                with open(os.path.join(d, f"f{i:02d}"), "wb") as f:
                    f.write(b"%d/%d/%d\n" % (top, sub, i))
                made += 1
        top += 1
    return dest


# -- the three systems ---------------------------------------------------------

#: gitroot variants the comparison can run side by side (--variants):
#: name -> (environment, read-ahead in KiB to force after mounting or None)
LEVERS = ("readdirplus", "cache_readdir", "cache_symlinks", "plus_always")
#: FUSE passthrough to a cache of inflated blobs (the libfuse 3 back end's
#: opt-in lever, libfuse >= 3.17): "passthrough-fill" starts every mount
#: with an empty cache (a first boot after an update: each file is verified
#: and written to the cache as it is opened); "passthrough" has the cache
#: filled once before the repetitions (every later boot)
PASSTHROUGH_VARIANTS = ("passthrough-fill", "passthrough")
VARIANTS = {
    "gitroot": ({}, None),                                  # what the mount picks
    "libfuse3": ({"GITROOT_FUSE": "libfuse3"}, None),
    "libfuse2": ({"GITROOT_FUSE": "libfuse2"}, None),
    "lowlevel": ({"GITROOT_FUSE": "lowlevel"}, None),
    # the low-level back end with opendir answered from Python
    # (cache_readdir + keep_cache) instead of ENOSYS
    "lowlevel-opendir": ({"GITROOT_FUSE": "lowlevel", "GITROOT_LOWLEVEL_OFF": "no_opendir"},
                         None),
    # the default back end without read-ahead across files
    # (gitroot.serve.readahead), or with one worker thread instead of two
    "no-filereadahead": ({"GITROOT_READAHEAD": "off"}, None),
    "filereadahead-1": ({"GITROOT_READAHEAD": "1"}, None),
    "no-libreadahead": ({"GITROOT_READAHEAD_LIBS": "off"}, None),
    "no-readahead": ({"GITROOT_FUSE": "libfuse3"}, 128),    # the kernel's default
    "no-levers": ({"GITROOT_FUSE": "libfuse3", "GITROOT_FUSE3_OFF": ",".join(LEVERS)}, 128),
    "before": ({}, None),                                    # code from --before
    "main": ({}, None),                                      # code from --main
    # bench/pyfuse3_prototype.py: the view through pyfuse3 (low-level API);
    # $GITROOT_BENCH_PYFUSE3_PATH may name a directory holding pyfuse3 and
    # trio for an interpreter that lacks them (e.g. links into Debian's)
    "pyfuse3-proto": ({}, None),
    **{name: ({"GITROOT_FUSE": "libfuse3", "GITROOT_FUSE3_ON": "passthrough"}, None)
       for name in PASSTHROUGH_VARIANTS},
}
#: on by default in gitroot.serve.libfuse3 (DEFAULT_LEVERS; cache_readdir
#: only with libfuse >= 3.16); the others are opt-in.  Both no-X and with-X
#: exist for every lever, since the defaults depend on the libfuse loaded.
DEFAULT_LEVERS = ("readdirplus", "cache_symlinks")
for _lever in LEVERS:
    VARIANTS["no-" + _lever] = ({"GITROOT_FUSE": "libfuse3",
                                 "GITROOT_FUSE3_OFF": _lever}, None)
    VARIANTS["with-" + _lever] = ({"GITROOT_FUSE": "libfuse3",
                                   "GITROOT_FUSE3_ON": _lever}, None)


class Gitroot:
    """``gitroot mount`` of one commit, remounted on demand."""

    def __init__(self, python: str, repo: str, rev: str, mountpoint: str, probe: str,
                 variant: str = "gitroot", code: str = REPO_ROOT):
        self.python = python
        self.repo = repo
        self.rev = rev
        self.mountpoint = mountpoint
        self.probe = probe          # a file path inside the tree, stat'ed after mounting
        self.pid = None
        extra, self.readahead_kb = VARIANTS[variant]
        self.code = code            # run from there: "python -m" puts the cwd first
        self.env = dict(os.environ, PYTHONPATH=code, **extra)
        self.backend = None         # from the mount's record (None: code without one)
        self.blob_cache = None      # the passthrough variants' cache directory
        self.empty_cache_each_mount = variant == "passthrough-fill"
        if variant in PASSTHROUGH_VARIANTS:
            self.blob_cache = self.env["GITROOT_BLOB_CACHE"] = mountpoint + ".blobcache"
        self.command = [python, "-m", "gitroot", "mount"]
        if variant == "pyfuse3-proto":
            self.command = [python, os.path.join(code, "bench", "pyfuse3_prototype.py")]
            extra_path = os.environ.get("GITROOT_BENCH_PYFUSE3_PATH")
            if extra_path:
                self.env["PYTHONPATH"] = code + os.pathsep + extra_path
            self.backend = "pyfuse3 (prototype)"

    def mount(self) -> float:
        """Mount; seconds from starting ``gitroot mount`` to a successful stat."""
        pid_file = self.mountpoint + ".pid"
        target = os.path.join(self.mountpoint, self.probe)
        record = self.mountpoint + ".json"
        start = time.perf_counter()
        run(self.command + ["--repo", self.repo, self.rev, self.mountpoint, "--pid-file",
                            pid_file]
            + (["--record", record] if self.supports_record() else []), env=self.env,
            cwd=self.code)
        while True:
            try:
                os.stat(target)
                break
            except FileNotFoundError:
                if time.perf_counter() - start > 30:
                    raise
                time.sleep(0.001)
        elapsed = time.perf_counter() - start
        with open(pid_file) as f:
            self.pid = int(f.read())
        if os.path.exists(record):
            import json
            with open(record) as f:
                self.backend = json.load(f).get("backend")
        if self.readahead_kb is not None:
            dev = os.stat(self.mountpoint).st_dev
            with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb",
                      "w") as f:
                f.write(f"{self.readahead_kb}\n")
        return elapsed

    def supports_record(self) -> bool:
        if self.command[1] != "-m":
            return False
        if not hasattr(self, "_record"):
            proc = subprocess.run([self.python, "-m", "gitroot", "mount", "--help"],
                                  env=self.env, capture_output=True, text=True, cwd=self.code)
            self._record = "--record" in proc.stdout
        return self._record

    def peak_rss_mb(self) -> float:
        """The daemon's peak resident set so far (VmHWM)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def unmount(self) -> None:
        if is_mounted(self.mountpoint):
            run(["fusermount", "-u", self.mountpoint])
        if self.pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and os.path.exists(f"/proc/{self.pid}"):
                try:
                    with open(f"/proc/{self.pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            break
                except FileNotFoundError:
                    break
                time.sleep(0.01)
            else:
                if os.path.exists(f"/proc/{self.pid}"):
                    os.kill(self.pid, signal.SIGTERM)
            self.pid = None

    def fresh(self) -> float:
        self.unmount()
        if self.empty_cache_each_mount and self.blob_cache:
            shutil.rmtree(self.blob_cache, ignore_errors=True)
        drop_caches()
        return self.mount()

    def fill_cache(self) -> None:
        """Fill the passthrough cache once (the boot that did it is over)."""
        if self.blob_cache and not self.empty_cache_each_mount:
            self.fresh()
            timed_shell(f"tar -C {self.mountpoint} -cf - . | wc -c")
            self.unmount()


class Squashfs:
    def __init__(self, image: str, mountpoint: str):
        self.image = image
        self.mountpoint = mountpoint

    def mount(self) -> None:
        run(["mount", "-t", "squashfs", "-o", "loop,ro", self.image, self.mountpoint])

    def unmount(self) -> None:
        if is_mounted(self.mountpoint):
            run(["umount", self.mountpoint])
        # mount -o loop sets autoclear; detach anything left over all the same
        out = run(["losetup", "-j", self.image], capture_output=True, text=True).stdout
        for line in out.splitlines():
            run(["losetup", "-d", line.split(":")[0]], check=False)

    def fresh(self) -> None:
        self.unmount()
        drop_caches()
        self.mount()


class Native:
    def __init__(self, path: str):
        self.mountpoint = path

    def fresh(self) -> None:
        drop_caches()

    def unmount(self) -> None:
        pass


# -- measuring ---------------------------------------------------------------

def measure_round(systems: dict, start_cmd: str, warm_starts: int, results: dict,
                  counts: dict) -> None:
    """One repetition of every workload on every system, interleaved."""
    workloads = (
        ("walk", "find {m} | wc -l"),
        ("read", "tar -C {m} -cf - . | wc -c"),
    )
    for key, template in workloads:
        for name, system in systems.items():
            fresh = system.fresh()
            if isinstance(system, Gitroot):
                results[name].setdefault("mount_first_stat_cold", []).append(fresh)
            cmd = template.format(m=system.mountpoint)
            cold, out = timed_shell(cmd)
            warm, out2 = timed_shell(cmd)
            results[name].setdefault(key + "_cold", []).append(cold)
            results[name].setdefault(key + "_warm", []).append(warm)
            counts.setdefault(key, {})[name] = int(out2)
            if key == "read" and isinstance(system, Gitroot):
                results[name].setdefault("daemon_private_mb", []).append(
                    private_dirty_kb(system.pid) / 1024)
    for name, system in systems.items():
        system.fresh()
        cmd = f"chroot {system.mountpoint} {start_cmd}"
        cold, _ = timed_shell(cmd)
        results[name].setdefault("start_cold", []).append(cold)
        for _ in range(warm_starts):
            warm, _ = timed_shell(cmd)
            results[name].setdefault("start_warm", []).append(warm)
    for name, system in systems.items():
        if isinstance(system, Gitroot):
            system.unmount()
            results[name].setdefault("mount_first_stat", []).append(system.mount())
            results[name].setdefault("daemon_private_mb_idle", []).append(
                private_dirty_kb(system.pid) / 1024)


def median(values):
    return statistics.median(values) if values else None


def summarize(results: dict) -> dict:
    return {name: {k: median(v) for k, v in figs.items()} for name, figs in results.items()}


def check_targets(med: dict) -> list:
    out = []
    g = med["gitroot"]
    for key, versus, limit in TARGETS:
        value = g.get(key)
        if value is None:
            continue
        if versus:
            base = med[versus].get(key)
            figure = value / base if base else None
            text = f"{key} = {figure:.2f} x {versus} (target <= {limit} x)"
        else:
            figure = value
            unit = "s" if key == "mount_first_stat" else "MB"
            text = f"{key} = {figure:.3g} {unit} (target <= {limit} {unit})"
        met = figure is not None and figure <= limit
        out.append({"figure": key, "versus": versus, "value": figure, "limit": limit,
                    "met": met, "text": text})
    return out


def fmt(value, unit="s") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
    return f"{value:.1f} {unit}"


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def print_table(med: dict, targets: list, counts: dict, reps: int, out=sys.stdout) -> None:
    """Figures per system, then each gitroot variant's ratio to squashfs (and
    for warm program start, to native)."""
    names = list(med)
    variants = [n for n in names if n not in ("native", "squashfs")]
    rows = [("figure", *names, *(f"{v}/sq" for v in variants))]
    for key, label, unit in FIGURES:
        base = med["native" if key == "start_warm" else "squashfs"].get(key)
        rows.append((label + (" (/native)" if key == "start_warm" else ""),
                     *(fmt(med[n].get(key)) for n in names),
                     *(ratio(med[v].get(key), base) for v in variants)))
    for key, label, unit in (("mount_first_stat", "mount to first stat, warm", "s"),
                             ("mount_first_stat_cold", "mount to first stat, cold", "s"),
                             ("daemon_private_mb_idle", "daemon Private_Dirty, mounted", "MB"),
                             ("daemon_private_mb", "daemon Private_Dirty, after full read",
                              "MB")):
        rows.append((label, *("" if n in ("native", "squashfs") else fmt(med[n].get(key), unit)
                              for n in names), *("" for _ in variants)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"medians of {reps} repetition(s); program start warm: median of all warm runs",
          file=out)
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for key, per_system in counts.items():
        print(f"{key} output: " + ", ".join(f"{k} {v}" for k, v in per_system.items()),
              file=out)
    print("targets (the gitroot column):", file=out)
    for t in targets:
        print(f"  {'MET ' if t['met'] else 'MISS'} {t['text']}", file=out)


# -- modes -------------------------------------------------------------------

def gitroot_commit(python: str, source: str, repo: str) -> tuple:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    start = time.perf_counter()
    proc = run([python, "-m", "gitroot", "commit", source, "--repo", repo,
                "--branch", "bench", "-m", "benchmark"], env=env, capture_output=True,
               text=True)
    return proc.stdout.strip().splitlines()[-1], time.perf_counter() - start


def pick_probe(source: str) -> str:
    for candidate in ("usr/bin/env", "bin/sh"):
        if os.path.isfile(os.path.join(source, candidate)):
            return candidate
    for dirpath, _, files in os.walk(source):
        for name in files:
            return os.path.relpath(os.path.join(dirpath, name), source)
    raise RuntimeError("the source tree has no files")


def other_code(args, variant: str) -> str:
    """Where a variant's gitroot code is: --before, --main, or this checkout."""
    return {"before": args.before, "main": args.main}.get(variant) or REPO_ROOT


def gitroot_systems(args, work: str, repo: str, rev: str, probe: str,
                    variants=None, prefix: str = "") -> dict:
    """One Gitroot per variant (VARIANTS), each with its own mount point."""
    out = {}
    for variant in variants or args.variants:
        name = prefix + variant if prefix else variant
        mountpoint = os.path.join(work, "mnt-" + name)
        os.makedirs(mountpoint)
        code = other_code(args, variant)
        out[name] = Gitroot(args.python, repo, rev, mountpoint, probe, variant, code)
    return out


def source_tree(args, work: str) -> tuple:
    """(source, program start command, description) for --quick or the Debian root."""
    if args.quick:
        source = make_quick_tree(os.path.join(work, "tree"))
        return source, SH_START, "generated tree (a few hundred files and /bin/sh)"
    from tests.rootfs import debian_minbase
    log("building or reusing the Debian bookworm minbase root with python3 ...")
    source = debian_minbase("bookworm", include="python3")
    return (source, PY_START,
            f"debootstrap --variant=minbase --include=python3 bookworm ({source})")


def compare_mode(args, work: str) -> dict:
    source, start_cmd, what = source_tree(args, work)
    repo = os.path.join(work, "repo.git")
    description = ""
    if args.device:
        source, gitroots, description = device_mode(args, work, source)
        rev = "stable"
    else:
        log("gitroot commit ...")
        rev, commit_s = gitroot_commit(args.python, source, repo)
        description = f"commit {rev[:12]} in {commit_s:.1f} s; repository {du(repo) / 1e6:.1f} MB"
        gitroots = gitroot_systems(args, work, repo, rev, pick_probe(source))
    image = os.path.join(work, "root.squashfs")
    log("mksquashfs -comp zstd ...")
    start = time.perf_counter()
    run(["mksquashfs", source, image, "-comp", "zstd", "-noappend", "-quiet", "-no-progress"],
        stdout=subprocess.DEVNULL)
    squash_s = time.perf_counter() - start
    os.makedirs(os.path.join(work, "mnt-squashfs"))
    systems = {
        "native": Native(source),
        "squashfs": Squashfs(image, os.path.join(work, "mnt-squashfs")),
        **gitroots,
    }
    results = {name: {} for name in systems}
    counts: dict = {}
    for g in gitroots.values():
        g.fill_cache()
    try:
        for rep in range(args.reps):
            log(f"repetition {rep + 1}/{args.reps} ...")
            measure_round(systems, start_cmd, 3, results, counts)
    finally:
        for system in systems.values():
            system.unmount()
    med = summarize(results)
    targets = check_targets(med) if "gitroot" in med else []
    print(f"tree: {what}")
    print(f"gitroot: {args.python} (pygit2 {lib_version(args.python, 'pygit2')}, "
          f"mfusepy {lib_version(args.python, 'mfusepy')}, "
          f"fusepy {lib_version(args.python, 'fusepy')}); {description}; squashfs image "
          f"{os.path.getsize(image) / 1e6:.1f} MB in {squash_s:.1f} s")
    print("back ends: " + ", ".join(f"{n} {g.backend or '(no record: fusepy)'}"
                                   for n, g in gitroots.items()))
    for name, g in gitroots.items():
        if g.blob_cache and os.path.isdir(g.blob_cache):
            print(f"blob cache of {name}: {du(g.blob_cache) / 1e6:.1f} MB on disk "
                  f"({len(os.listdir(g.blob_cache))} files)")
        elif g.blob_cache:
            print(f"blob cache of {name}: none (no passthrough: libfuse < 3.17 or "
                  "Linux < 6.9, see the daemon's log)")
    print_table(med, targets, counts, args.reps)
    return {
        "mode": ("device-" if args.device else "") + ("quick" if args.quick else "full"),
        "tree": what,
        "python": args.python,
        "pygit2": lib_version(args.python, "pygit2"),
        "mfusepy": lib_version(args.python, "mfusepy"),
        "fusepy": lib_version(args.python, "fusepy"),
        "kernel": platform.release(),
        "repetitions": args.reps,
        "variants": {n: {"backend": g.backend, "env": {k: v for k, v in g.env.items()
                                                      if k.startswith("GITROOT_")}}
                     for n, g in gitroots.items()},
        "description": description,
        "squashfs_bytes": os.path.getsize(image),
        "entries": counts.get("walk"),
        "tar_bytes": counts.get("read"),
        "raw": results,
        "medians": med,
        "targets": targets,
    }


# -- a device's own repository ----------------------------------------------------

RELEASES = 5


def next_release(previous: str, dest: str, n: int) -> str:
    """A copy of *previous* as a new release: every 20th regular file gets a
    line more, every 97th is removed, and a few new files appear (an
    upgrade's shape: most of the tree unchanged)."""
    run(["cp", "-a", previous, dest])
    i = 0
    for dirpath, dirnames, files in os.walk(dest):
        dirnames.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            i += 1
            if i % 97 == 0 and "bin" not in dirpath and "lib" not in dirpath:
                os.unlink(path)
            elif i % 20 == 0 and os.access(path, os.W_OK):
                with open(path, "ab") as f:
                    f.write(b"\n# release %d\n" % n)
    extra = os.path.join(dest, "usr/share/gitroot-bench")
    os.makedirs(extra, exist_ok=True)
    for k in range(20):
        with open(os.path.join(extra, f"r{n}-{k}"), "wb") as f:
            f.write((b"release %d file %d\n" % (n, k)) * (50 * (k + 1)))
    return dest


def device_mode(args, work: str, first: str) -> tuple:
    """Five signed releases, fetched release after release by two devices
    (git smart HTTP and static bundles) the way `gitroot fetch` does; the
    last release mounted from the publisher's repository and each device's."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    from servers import Lighttpd
    import json
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    keys = os.path.join(work, "keys")
    os.makedirs(keys)
    key = os.path.join(keys, "release")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "release", "-f", key])
    with open(key + ".pub") as f:
        pub = f.read().split()
    allowed = os.path.join(keys, "allowed_signers")
    with open(allowed, "w") as f:
        f.write(f"release@example.org {pub[0]} {pub[1]}\n")
    git_server = Lighttpd(os.path.join(work, "git-http"), git=True).start()
    static_server = Lighttpd(os.path.join(work, "static-http"), git=False).start()
    publisher = str(git_server.repos_dir / "os.git")
    devices = {"device-http": git_server.repo_url("os.git"),
               "device-bundle": static_server.url + "/"}
    configs = {}
    for name, url in devices.items():
        base = os.path.join(work, name)
        os.makedirs(os.path.join(base, "boot"))
        configs[name] = os.path.join(base, "gitroot.yml")
        with open(configs[name], "w") as f:
            json.dump({"remotes": [url], "branch": "stable",
                       "repository": os.path.join(base, "repo.git"),
                       "state_dir": os.path.join(base, "state"),
                       "boot_dir": os.path.join(base, "boot"),
                       "trusted_keys": {"allowed_signers": allowed},
                       "signature_policy": "strict", "tries": 2}, f)
    device_env = dict(env, GITROOT_CMDLINE="root=/dev/vda ro", GITROOT_RUN_DIR=work + "/run")
    fetch_s = {name: [] for name in devices}
    previous_commit = None
    source = first
    try:
        for n in range(1, RELEASES + 1):
            if n > 1:
                source = next_release(source, os.path.join(work, f"release{n}"), n)
            log(f"release {n}: commit, bundle, fetch by both devices ...")
            commit = run([args.python, "-m", "gitroot", "commit", source, "--repo", publisher,
                          "--branch", "stable", "--sign-key", key, "-m", f"release {n}"],
                         env=env, capture_output=True, text=True).stdout.split()[-1]
            bundle = [args.python, "-m", "gitroot", "bundle", "--repo", publisher, "--to",
                      commit, "--branch", "stable", "--publish",
                      str(static_server.document_root)]
            if previous_commit:
                bundle += ["--from", previous_commit]
            run(bundle, env=env, capture_output=True)
            for name in devices:
                started = time.perf_counter()
                proc = run([args.python, "-m", "gitroot", "fetch", "--config", configs[name]],
                           env=device_env, capture_output=True, text=True, check=False)
                fetch_s[name].append(time.perf_counter() - started)
                if proc.returncode != 0:
                    raise RuntimeError(f"{name}: gitroot fetch of release {n} failed: "
                                       f"{proc.stderr.strip()}")
            previous_commit = commit
    finally:
        git_server.stop()
        static_server.stop()
    probe = pick_probe(source)
    gitroots = gitroot_systems(args, work, publisher, commit, probe, ["gitroot"],
                               prefix="")
    gitroots = {"publisher": gitroots["gitroot"]}
    shape = {"publisher": repo_shape(publisher)}
    for name in devices:
        repo = os.path.join(work, name, "repo.git")
        shape[name] = repo_shape(repo)
        mountpoint = os.path.join(work, "mnt-" + name)
        os.makedirs(mountpoint)
        gitroots[name] = Gitroot(args.python, repo, commit, mountpoint, probe)
    description = (f"{RELEASES} releases, last {commit[:12]}; fetch seconds per release: "
                   + "; ".join(f"{n} " + " ".join(f"{t:.1f}" for t in ts)
                               for n, ts in fetch_s.items())
                   + "; repositories: " + "; ".join(f"{n} {v}" for n, v in shape.items()))
    return source, gitroots, description


def repo_shape(repo: str) -> str:
    """Packs, loose objects and size of a repository, for the report."""
    objects = os.path.join(repo, "objects")
    packs = [n for n in os.listdir(os.path.join(objects, "pack")) if n.endswith(".pack")]
    loose = sum(len(os.listdir(os.path.join(objects, d))) for d in os.listdir(objects)
                if len(d) == 2)
    return f"{len(packs)} packs, {loose} loose, {du(repo) / 1e6:.0f} MB"


def scale_mode(args, work: str) -> dict:
    sizes = (10_000, 100_000)
    out = {"mode": "scale", "python": args.python, "sizes": {}}
    rows = []
    for size in sizes:
        log(f"scale: building and committing {size} entries ...")
        source = make_scale_tree(os.path.join(work, f"tree{size}"), size)
        repo = os.path.join(work, f"repo{size}.git")
        rev, commit_s = gitroot_commit(args.python, source, repo)
        out["sizes"][size] = {"commit_seconds": commit_s, "variants": {}}
        gitroots = gitroot_systems(args, work, repo, rev, pick_probe(source),
                                   prefix=f"{size}-")
        figs: dict = {name: {} for name in gitroots}
        try:
            for _ in range(args.reps):
                for name, g in gitroots.items():     # interleaved
                    f = figs[name]
                    f.setdefault("mount_first_stat_cold", []).append(g.fresh())
                    f.setdefault("private_mb_mounted", []).append(private_dirty_kb(g.pid) / 1024)
                    walk, count = timed_shell(f"find {g.mountpoint} | wc -l")
                    f.setdefault("walk_cold", []).append(walk)
                    f.setdefault("private_mb_after_walk", []).append(
                        private_dirty_kb(g.pid) / 1024)
                    f.setdefault("peak_rss_mb_after_walk", []).append(g.peak_rss_mb())
                    g.unmount()
                    f.setdefault("mount_first_stat", []).append(g.mount())
                    g.unmount()
        finally:
            for g in gitroots.values():
                g.unmount()
        for name, g in gitroots.items():
            med = {k: median(v) for k, v in figs[name].items()}
            out["sizes"][size]["variants"][name] = {"entries": int(count), "raw": figs[name],
                                                    "medians": med, "backend": g.backend}
            rows.append((name, int(count), med))
    print(f"scale check, gitroot under {args.python}; medians of {args.reps} repetition(s)")
    header = ("variant", "entries", "mount->stat warm", "mount->stat cold", "walk cold",
              "Private_Dirty mounted", "Private_Dirty after walk", "peak RSS after walk")
    table = [header]
    for name, count, med in rows:
        table.append((name, str(count), fmt(med["mount_first_stat"]),
                      fmt(med["mount_first_stat_cold"]), fmt(med["walk_cold"]),
                      fmt(med["private_mb_mounted"], "MB"),
                      fmt(med["private_mb_after_walk"], "MB"),
                      fmt(med["peak_rss_mb_after_walk"], "MB")))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("targets at 100,000 entries: mount to first stat <= 0.5 s, "
          "Private_Dirty after a full walk <= 80 MB")
    return out


BIG_FILE = 1 << 30


def make_big_file(path: str, size: int = BIG_FILE) -> str:
    """*size* bytes of text-like data (zlib makes about a third of it)."""
    import random
    rng = random.Random(1)
    words = [bytes(rng.choice(b"abcdefghijklmnop ") for _ in range(rng.randint(2, 9)))
             for _ in range(4096)]
    block = b"".join(rng.choice(words) for _ in range(200_000))[:1 << 20]
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            f.write(b"%08d" % i + block[8:])
    return path


def memory_mode(args, work: str) -> dict:
    """Peak daemon memory (VmHWM) reading a 1 GiB file and mounting and
    walking a 100,000-entry tree, for each variant (e.g. before/after)."""
    log("memory: a 1 GiB file and a 100,000-entry tree, committed ...")
    big_tree = os.path.join(work, "big")
    os.makedirs(big_tree)
    make_big_file(os.path.join(big_tree, "big.bin"))
    big_repo = os.path.join(work, "big.git")
    big_rev, _ = gitroot_commit(args.python, big_tree, big_repo)
    scale_tree = make_scale_tree(os.path.join(work, "tree100000"), 100_000)
    scale_repo = os.path.join(work, "scale.git")
    scale_rev, _ = gitroot_commit(args.python, scale_tree, scale_repo)
    expected = run(["sha256sum", os.path.join(big_tree, "big.bin")], capture_output=True,
                   text=True).stdout.split()[0]
    out = {"mode": "memory", "python": args.python, "variants": {}}
    for variant in args.variants:
        code = other_code(args, variant)
        figs = {}
        g = Gitroot(args.python, big_repo, big_rev, os.path.join(work, "mnt-big-" + variant),
                    "big.bin", variant, code)
        os.makedirs(g.mountpoint)
        try:
            g.fresh()
            figs["big_mounted_rss_mb"] = g.peak_rss_mb()
            seconds, digest = timed_shell(f"sha256sum {g.mountpoint}/big.bin")
            figs["big_read_seconds"] = seconds
            figs["big_read_correct"] = digest.split()[0] == expected
            figs["big_peak_rss_mb"] = g.peak_rss_mb()
            figs["big_private_mb_after"] = private_dirty_kb(g.pid) / 1024
        finally:
            g.unmount()
        g = Gitroot(args.python, scale_repo, scale_rev,
                    os.path.join(work, "mnt-scale-" + variant), pick_probe(scale_tree),
                    variant, code)
        os.makedirs(g.mountpoint)
        try:
            g.fresh()
            figs["scale_mounted_peak_rss_mb"] = g.peak_rss_mb()
            _, count = timed_shell(f"find {g.mountpoint} | wc -l")
            figs["scale_entries"] = int(count)
            figs["scale_walked_peak_rss_mb"] = g.peak_rss_mb()
            figs["scale_private_mb_after_walk"] = private_dirty_kb(g.pid) / 1024
        finally:
            g.unmount()
        figs["backend"] = g.backend
        out["variants"][variant] = figs
    print(f"daemon memory, gitroot under {args.python} (VmHWM = peak resident set)")
    labels = (("big_mounted_rss_mb", "1 GiB file: peak RSS, mounted", "MB"),
              ("big_peak_rss_mb", "1 GiB file: peak RSS after sha256sum of it", "MB"),
              ("big_private_mb_after", "1 GiB file: Private_Dirty after", "MB"),
              ("big_read_seconds", "1 GiB file: sha256sum through the mount", "s"),
              ("scale_mounted_peak_rss_mb", "100,000 entries: peak RSS, mounted", "MB"),
              ("scale_walked_peak_rss_mb", "100,000 entries: peak RSS after find", "MB"),
              ("scale_private_mb_after_walk", "100,000 entries: Private_Dirty after find",
               "MB"))
    names = list(out["variants"])
    table = [("figure", *names)]
    for key, label, unit in labels:
        table.append((label, *(fmt(out["variants"][n][key], unit) for n in names)))
    table.append(("content read back correctly",
                  *(str(out["variants"][n]["big_read_correct"]) for n in names)))
    table.append(("back end", *(str(out["variants"][n]["backend"] or "(no record)")
                                for n in names)))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return out


def lib_version(python: str, module: str) -> str:
    code = ("import importlib.metadata as m, sys\n"
            "for n in sys.argv[1:]:\n"
            "    try:\n        print(m.version(n)); break\n"
            "    except Exception: pass\n")
    names = [module] + (["python3-fusepy"] if module == "fusepy" else [])
    proc = subprocess.run([python, "-c", code, *names], capture_output=True, text=True)
    if proc.stdout.strip():
        return proc.stdout.strip()
    # Debian's python3-fusepy has no dist-info the metadata API finds.
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-" + module],
                          capture_output=True, text=True)
    return (proc.stdout.strip() + " (dpkg)") if proc.returncode == 0 else "?"


def du(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="a generated tree of a few hundred files, no debootstrap")
    mode.add_argument("--scale", action="store_true",
                      help="mount time and memory at ~10,000 and ~100,000 entries")
    mode.add_argument("--memory", action="store_true",
                      help="peak daemon memory: reading a 1 GiB file, mounting and "
                           "walking 100,000 entries (with --before: side by side)")
    parser.add_argument("--device", action="store_true",
                        help="mount the last of five releases fetched by git smart HTTP "
                             "and by static bundles, beside the publisher's repository")
    parser.add_argument("--variants", default="gitroot,libfuse2",
                        help="gitroot variants side by side (default: gitroot,libfuse2); "
                             "names: " + ", ".join(VARIANTS))
    parser.add_argument("--levers", action="store_true",
                        help="add one variant per libfuse 3 lever turned off (or on, for "
                             "those off by default), and one with all of them off")
    parser.add_argument("--before", metavar="DIR",
                        help="a checkout of older gitroot code: adds the variant 'before' "
                             "(e.g. git worktree add /tmp/before main)")
    parser.add_argument("--main", metavar="DIR",
                        help="a checkout of the main branch: adds the variant 'main' "
                             "(a branch side by side with main and an older 'before')")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions (default: 5, --quick 1, --scale 3)")
    parser.add_argument("--json", help="write results here (default: bench/results/)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs gitroot (default: this one)")
    parser.add_argument("--workdir", default="/var/tmp",
                        help="where the repository, image and mount points go "
                             "(a disk, not tmpfs, or cold runs mean nothing)")
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick or args.memory else 3 if args.scale else 5
    args.variants = [v for v in args.variants.split(",") if v]
    if args.levers:
        args.variants += [v for v in [*(("no-" if lever in DEFAULT_LEVERS else "with-") + lever
                                        for lever in LEVERS),
                                      "no-readahead", "no-levers"] if v not in args.variants]
    if args.before:
        args.before = os.path.abspath(args.before)
        if "before" not in args.variants:
            args.variants.append("before")
    if args.main:
        args.main = os.path.abspath(args.main)
        if "main" not in args.variants:
            args.variants.append("main")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if (unknown or ("before" in args.variants and not args.before)
            or ("main" in args.variants and not args.main)):
        parser.error(f"unknown variants {unknown} (or 'before' or 'main' without "
                     "--before or --main)")
    if os.geteuid() != 0:
        parser.error("must run as root (mounts, chroot, drop_caches)")
    work = tempfile.mkdtemp(prefix="gitroot-bench-", dir=args.workdir)
    try:
        if args.scale:
            result = scale_mode(args, work)
        elif args.memory:
            result = memory_mode(args, work)
        else:
            result = compare_mode(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_results(result, args.json, "mount")
    return 0


if __name__ == "__main__":
    sys.exit(main())
