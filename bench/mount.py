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

#: (figure, what it is compared with, limit) -- the targets of issue 3
TARGETS = (
    ("start_warm", "native", 1.3),
    ("walk_cold", "squashfs", 5.0),
    ("read_cold", "squashfs", 2.0),
    ("read_warm", "squashfs", 2.0),
    ("mount_first_stat", None, 0.5),          # seconds
    ("daemon_private_mb", None, 40.0),        # MB
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

class Gitroot:
    """``gitroot mount`` of one commit, remounted on demand."""

    def __init__(self, python: str, repo: str, rev: str, mountpoint: str, probe: str):
        self.python = python
        self.repo = repo
        self.rev = rev
        self.mountpoint = mountpoint
        self.probe = probe          # a file path inside the tree, stat'ed after mounting
        self.pid = None
        self.env = dict(os.environ, PYTHONPATH=REPO_ROOT)

    def mount(self) -> float:
        """Mount; seconds from starting ``gitroot mount`` to a successful stat."""
        pid_file = self.mountpoint + ".pid"
        target = os.path.join(self.mountpoint, self.probe)
        start = time.perf_counter()
        run([self.python, "-m", "gitroot", "mount", "--repo", self.repo, self.rev,
             self.mountpoint, "--pid-file", pid_file], env=self.env)
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
        return elapsed

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
        drop_caches()
        return self.mount()


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
            if name == "gitroot":
                results[name].setdefault("mount_first_stat_cold", []).append(fresh)
            cmd = template.format(m=system.mountpoint)
            cold, out = timed_shell(cmd)
            warm, out2 = timed_shell(cmd)
            results[name].setdefault(key + "_cold", []).append(cold)
            results[name].setdefault(key + "_warm", []).append(warm)
            counts.setdefault(key, {})[name] = int(out2)
            if key == "read" and name == "gitroot":
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
    gitroot = systems["gitroot"]
    gitroot.unmount()
    results["gitroot"].setdefault("mount_first_stat", []).append(gitroot.mount())
    results["gitroot"].setdefault("daemon_private_mb_idle", []).append(
        private_dirty_kb(gitroot.pid) / 1024)


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
    n, s, g = med["native"], med["squashfs"], med["gitroot"]
    rows = [("figure", "native", "squashfs", "gitroot", "g/squashfs", "g/native")]
    for key, label, unit in FIGURES:
        rows.append((label, fmt(n.get(key)), fmt(s.get(key)), fmt(g.get(key)),
                     ratio(g.get(key), s.get(key)), ratio(g.get(key), n.get(key))))
    rows.append(("mount to first stat, warm", "", "", fmt(g.get("mount_first_stat")), "", ""))
    rows.append(("mount to first stat, cold", "", "", fmt(g.get("mount_first_stat_cold")),
                 "", ""))
    rows.append(("daemon Private_Dirty, mounted", "", "",
                 fmt(g.get("daemon_private_mb_idle"), "MB"), "", ""))
    rows.append(("daemon Private_Dirty, after full read", "", "",
                 fmt(g.get("daemon_private_mb"), "MB"), "", ""))
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
    print("targets:", file=out)
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


def compare_mode(args, work: str) -> dict:
    if args.quick:
        source = make_quick_tree(os.path.join(work, "tree"))
        start_cmd = SH_START
        what = "generated tree (a few hundred files and /bin/sh)"
    else:
        from tests.rootfs import debian_minbase
        log("building or reusing the Debian bookworm minbase root with python3 ...")
        source = debian_minbase("bookworm", include="python3")
        start_cmd = PY_START
        what = f"debootstrap --variant=minbase --include=python3 bookworm ({source})"
    repo = os.path.join(work, "repo.git")
    log("gitroot commit ...")
    rev, commit_s = gitroot_commit(args.python, source, repo)
    image = os.path.join(work, "root.squashfs")
    log("mksquashfs -comp zstd ...")
    start = time.perf_counter()
    run(["mksquashfs", source, image, "-comp", "zstd", "-noappend", "-quiet", "-no-progress"],
        stdout=subprocess.DEVNULL)
    squash_s = time.perf_counter() - start
    mnt = {name: os.path.join(work, "mnt-" + name) for name in ("squashfs", "gitroot")}
    for path in mnt.values():
        os.makedirs(path)
    systems = {
        "native": Native(source),
        "squashfs": Squashfs(image, mnt["squashfs"]),
        "gitroot": Gitroot(args.python, repo, rev, mnt["gitroot"], pick_probe(source)),
    }
    results = {name: {} for name in SYSTEMS}
    counts: dict = {}
    try:
        for rep in range(args.reps):
            log(f"repetition {rep + 1}/{args.reps} ...")
            measure_round(systems, start_cmd, 3, results, counts)
    finally:
        for system in systems.values():
            system.unmount()
    med = summarize(results)
    targets = check_targets(med)
    print(f"tree: {what}")
    print(f"gitroot: {args.python} (pygit2 {lib_version(args.python, 'pygit2')}, "
          f"fusepy {lib_version(args.python, 'fusepy')}); commit {rev[:12]} "
          f"in {commit_s:.1f} s; repository {du(repo) / 1e6:.1f} MB; squashfs image "
          f"{os.path.getsize(image) / 1e6:.1f} MB in {squash_s:.1f} s")
    print_table(med, targets, counts, args.reps)
    return {
        "mode": "quick" if args.quick else "full",
        "tree": what,
        "python": args.python,
        "pygit2": lib_version(args.python, "pygit2"),
        "fusepy": lib_version(args.python, "fusepy"),
        "kernel": platform.release(),
        "repetitions": args.reps,
        "commit_seconds": commit_s,
        "repository_bytes": du(repo),
        "squashfs_bytes": os.path.getsize(image),
        "entries": counts.get("walk"),
        "tar_bytes": counts.get("read"),
        "raw": results,
        "medians": med,
        "targets": targets,
    }


def scale_mode(args, work: str) -> dict:
    sizes = (10_000, 100_000)
    out = {"mode": "scale", "python": args.python, "sizes": {}}
    rows = []
    for size in sizes:
        log(f"scale: building and committing {size} entries ...")
        source = make_scale_tree(os.path.join(work, f"tree{size}"), size)
        repo = os.path.join(work, f"repo{size}.git")
        rev, commit_s = gitroot_commit(args.python, source, repo)
        mnt = os.path.join(work, f"mnt{size}")
        os.makedirs(mnt)
        g = Gitroot(args.python, repo, rev, mnt, pick_probe(source))
        figs: dict = {}
        try:
            for _ in range(args.reps):
                figs.setdefault("mount_first_stat_cold", []).append(g.fresh())
                figs.setdefault("private_mb_mounted", []).append(private_dirty_kb(g.pid) / 1024)
                walk, count = timed_shell(f"find {mnt} | wc -l")
                figs.setdefault("walk_cold", []).append(walk)
                figs.setdefault("private_mb_after_walk", []).append(
                    private_dirty_kb(g.pid) / 1024)
                g.unmount()
                figs.setdefault("mount_first_stat", []).append(g.mount())
                g.unmount()
        finally:
            g.unmount()
        med = {k: median(v) for k, v in figs.items()}
        out["sizes"][size] = {"entries": int(count), "commit_seconds": commit_s, "raw": figs,
                              "medians": med}
        rows.append((size, int(count), med))
    print(f"scale check, gitroot under {args.python}; medians of {args.reps} repetition(s)")
    header = ("entries", "mount->stat warm", "mount->stat cold", "walk cold",
              "Private_Dirty mounted", "Private_Dirty after walk")
    table = [header]
    for _, count, med in rows:
        table.append((str(count), fmt(med["mount_first_stat"]),
                      fmt(med["mount_first_stat_cold"]), fmt(med["walk_cold"]),
                      fmt(med["private_mb_mounted"], "MB"),
                      fmt(med["private_mb_after_walk"], "MB")))
    (_, c1, m1), (_, c2, m2) = rows
    table.append((f"ratio x{c2 / c1:.1f}",) + tuple(
        ratio(m2[k], m1[k]) for k in ("mount_first_stat", "mount_first_stat_cold",
                                      "walk_cold", "private_mb_mounted",
                                      "private_mb_after_walk")))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
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
        args.reps = 1 if args.quick else 3 if args.scale else 5
    if os.geteuid() != 0:
        parser.error("must run as root (mounts, chroot, drop_caches)")
    work = tempfile.mkdtemp(prefix="gitroot-bench-", dir=args.workdir)
    try:
        result = scale_mode(args, work) if args.scale else compare_mode(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_results(result, args.json, "mount")
    return 0


if __name__ == "__main__":
    sys.exit(main())
