"""A sample root tree with every awkward kind of metadata, and a comparer.

``make_sample_tree(dest)`` builds the tree; ``make_release_tree(dest, n)``
makes it release *n* of a small OS (its own os-release, kernel and initrd in
/boot, a NEWS file from release 2 on); ``snapshot(root)`` records, for every
entry, everything the round trip must keep; ``compare(a, b)`` lists the
differences.  Used by the round-trip tests and by the README's example
(``bash .ci/example``, which runs ``python3 tests/sample_tree.py release N
DIR`` and ``python3 tests/sample_tree.py compare SOURCE MOUNT``).
"""

import hashlib
import os
import stat
import sys
from typing import Dict, List, Tuple

BIG_FILE_SIZE = 50 * 1024 * 1024 + 12345

# security.capability value for cap_net_raw+ep (VFS_CAP_REVISION_2), as
# `setcap cap_net_raw+ep` writes it; Debian's ping carries this.
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")


def make_sample_tree(dest: str, big_file: bool = True) -> str:
    """Create the sample tree at *dest* (must not exist); needs root."""
    os.makedirs(dest)
    j = lambda *p: os.path.join(dest, *p)  # noqa: E731
    for d in ("bin", "etc/ssl", "usr/lib/python3/dist-packages", "proc", "sys", "run",
              "tmp", "mnt", "dev", "var/spool/cron", "home/user/deep/er/still"):
        os.makedirs(j(d), exist_ok=True)
    with open(j("etc/hostname"), "w") as f:
        f.write("gitroot-sample\n")
    open(j("etc/empty-file"), "w").close()
    with open(j("usr/lib/python3/dist-packages/mod.py"), "w") as f:
        f.write("VALUE = 42\n")
    # executables, setuid, setgid, sticky
    for name, mode in (("bin/tool", 0o755), ("bin/su", 0o4755), ("bin/wall", 0o2755),
                       ("bin/ping", 0o755), ("bin/odd", 0o4711)):
        with open(j(name), "wb") as f:
            f.write(b"#!/bin/sh\necho " + name.encode() + b"\n")
        os.chmod(j(name), mode)
    os.chmod(j("tmp"), 0o1777)
    os.chmod(j("var/spool/cron"), 0o1730)
    os.setxattr(j("bin/ping"), "security.capability", CAP_NET_RAW)
    os.setxattr(j("etc/hostname"), "user.comment", b"set by the sample \x00\xff bytes")
    # other owners
    os.chown(j("home/user"), 1000, 1000)
    os.chown(j("home/user/deep"), 1000, 1000)
    with open(j("home/user/notes"), "w") as f:
        f.write("owned by 1000:1001\n")
    os.chown(j("home/user/notes"), 1000, 1001)
    os.chown(j("var/spool/cron"), 0, 102)
    with open(j("home/user/deep/er/still/file"), "w") as f:
        f.write("nested\n")
    # special files
    os.mknod(j("dev/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(j("dev/sda"), 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    os.chown(j("dev/sda"), 0, 6)
    os.mkfifo(j("run/initctl"), 0o600)
    # hardlinks (a group of three and a pair)
    with open(j("bin/gzip"), "wb") as f:
        f.write(b"gzip body\n")
    os.chmod(j("bin/gzip"), 0o755)
    os.link(j("bin/gzip"), j("bin/gunzip"))
    os.link(j("bin/gzip"), j("usr/zcat"))
    os.link(j("etc/hostname"), j("etc/hostname.link"))
    # symlinks: absolute, relative, dangling, to a directory
    os.symlink("/etc/hostname", j("etc/abs-link"))
    os.symlink("../bin/tool", j("etc/rel-link"))
    os.symlink("does/not/exist", j("etc/dangling"))
    os.symlink("usr/lib", j("lib"))
    # a name that is not UTF-8, and one with spaces, tabs and a newline
    with open(os.path.join(os.fsencode(dest), b"etc/latin1-\xe9t\xe9"), "wb") as f:
        f.write(b"not utf-8 name\n")
    with open(j("etc/space tab\tnewline\nname%41"), "w") as f:
        f.write("weird name\n")
    # a big file, not all zero
    if big_file:
        with open(j("usr/lib/big.bin"), "wb") as f:
            block = hashlib.sha256(b"seed").digest() * 32768   # 1 MiB
            remaining = BIG_FILE_SIZE
            i = 0
            while remaining:
                chunk = block[: min(len(block), remaining)]
                chunk = bytes([i & 0xFF]) + chunk[1:]
                f.write(chunk)
                remaining -= len(chunk)
                i += 1
    # distinctive mtimes with nanoseconds, set last, deepest first
    for i, (dirpath, dirnames, filenames) in enumerate(
            sorted(os.walk(os.fsencode(dest)), key=lambda t: -len(t[0]))):
        for k, name in enumerate(sorted(dirnames + filenames)):
            p = os.path.join(dirpath, name)
            ns = 1_600_000_000_123_456_789 + i * 1_000_000_007 + k * 13
            os.utime(p, ns=(ns, ns), follow_symlinks=False)
        ns = 1_500_000_000_987_654_321 + i
        os.utime(dirpath, ns=(ns, ns))
    return dest


Record = Tuple


def snapshot(root: str) -> Dict[bytes, Record]:
    """Everything the round trip must keep, per relative path."""
    out: Dict[bytes, Record] = {}
    broot = os.fsencode(root)
    inode_groups: Dict[Tuple[int, int], List[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(broot):
        dirnames.sort()
        for name in [b""] + sorted(dirnames + filenames):
            full = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(full, broot)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            try:
                names = sorted(os.listxattr(full, follow_symlinks=False))
                xattrs = tuple((n, os.getxattr(full, n, follow_symlinks=False)) for n in names)
            except OSError:
                xattrs = ()
            digest = None
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                digest = h.hexdigest()
            target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
            size = None if stat.S_ISDIR(st.st_mode) else st.st_size
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) \
                if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else None
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size,
                        st.st_mtime_ns, target, rdev, st.st_nlink, xattrs, digest)
            if not stat.S_ISDIR(st.st_mode):
                inode_groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
    # Hardlink structure: which paths share an inode (numbers differ between trees).
    for paths in inode_groups.values():
        if len(paths) > 1:
            for p in paths:
                out[p] = out[p] + (tuple(sorted(paths)),)
    return out


FIELDS = ("type", "mode", "uid", "gid", "size", "mtime_ns", "link target", "rdev",
          "link count", "xattrs", "sha256", "hardlink group")


def compare(expected: Dict[bytes, Record], actual: Dict[bytes, Record]) -> List[str]:
    """Human-readable differences; empty when the trees match."""
    problems = []
    for path in sorted(set(expected) | set(actual)):
        a, b = expected.get(path), actual.get(path)
        if a is None or b is None:
            problems.append(f"{path!r}: only in {'mount' if a is None else 'source'}")
            continue
        for field, x, y in zip(FIELDS, a + (None,) * 2, b + (None,) * 2):
            if x != y:
                problems.append(f"{path!r}: {field} {x!r} != {y!r}")
        if len(a) != len(b):
            problems.append(f"{path!r}: hardlink group differs")
    return problems


def make_release_tree(dest: str, release: int, big_file: bool = True) -> str:
    """The sample tree as release *release* of a small OS: what changes from
    one release to the next is /etc/os-release, the kernel and initrd in
    /boot (named after the release, as a kernel upgrade renames them) and,
    from release 2 on, /usr/share/doc/sample/NEWS."""
    make_sample_tree(dest, big_file=big_file)
    j = lambda *p: os.path.join(dest, *p)  # noqa: E731
    with open(j("etc/os-release"), "w") as f:
        f.write(f'PRETTY_NAME="gitroot sample OS, release {release}"\nVERSION_ID="{release}"\n')
    os.makedirs(j("boot"))
    for name in ("vmlinuz", "initrd.img"):
        with open(j("boot", f"{name}-6.12.{release}-amd64"), "wb") as f:
            f.write(f"{name} of release {release}\n".encode())
    if release >= 2:
        os.makedirs(j("usr/share/doc/sample"))
        with open(j("usr/share/doc/sample/NEWS"), "w") as f:
            f.writelines(f"release {n}: kernel 6.12.{n}\n" for n in range(release, 0, -1))
    return dest


def compare_command(source: str, mount: str) -> int:
    """Compare a mount with its source entry by entry and say so."""
    problems = compare(snapshot(source), snapshot(mount))
    if problems:
        print(f"MISMATCH: {len(problems)} differences")
        for p in problems[:50]:
            print("  " + p)
        return 1
    print(f"{mount} matches {source}: {len(snapshot(source))} entries, every type, mode, "
          "owner, size, mtime (ns), link target, device number, link count, xattr and "
          "SHA-256 equal")
    return 0


USAGE = """usage: sample_tree.py release N DIR       make release N of the sample OS in DIR
       sample_tree.py compare SOURCE MOUNT  compare a mount with its source"""


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "release" and args[1].isdigit():
        make_release_tree(args[2], int(args[1]))
        sys.exit(0)
    if len(args) == 3 and args[0] == "compare":
        sys.exit(compare_command(args[1], args[2]))
    print(USAGE, file=sys.stderr)
    sys.exit(2)
