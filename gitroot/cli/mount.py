"""gitroot mount --repo REPO REV MOUNTPOINT"""

import argparse

from gitroot.serve.daemon import mount


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, help="the (bare) git repository")
    parser.add_argument("rev", metavar="REV", help="commit id, tag or branch to serve")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--foreground", "-f", action="store_true",
                        help="serve in this process until unmounted")
    parser.add_argument("--allow-other", dest="allow_other", action="store_true", default=None,
                        help="let other users in (the default when run as root)")
    parser.add_argument("--no-allow-other", dest="allow_other", action="store_false")
    parser.add_argument("--log-file", help="the daemon's log (default: syslog if present)")
    parser.add_argument("--pid-file", help="write the daemon's pid here once the mount is ready")
    parser.add_argument("--jail", metavar="DIR",
                        help="boot path: once ready, the daemon chroots into DIR (the "
                        "repository is bound read-only at its own path inside), so it "
                        "outlives the initramfs; its argv[0] starts with '@' so that "
                        "systemd's shutdown spares it (root only)")
    parser.add_argument("--record", metavar="FILE",
                        help="once ready, write what serves the mount to FILE (JSON: "
                        "FUSE back end, binding, library, daemon pid, commit); with "
                        "--jail the default is /run/gitroot/mount.json")
    parser.add_argument("--suid", action="store_true",
                        help="setuid/setgid bits and device files take effect (for a "
                        "system root; never for a commit other users could mount)")


def run(args: argparse.Namespace) -> int:
    pid = mount(args.repo, args.rev, args.mountpoint, foreground=args.foreground,
                allow_other=args.allow_other, log_file=args.log_file, debug=args.debug,
                jail=args.jail, suid=args.suid, record=args.record)
    if args.pid_file and not args.foreground:
        with open(args.pid_file, "w") as f:
            f.write(f"{pid}\n")
    return 0
