"""gitroot status [--json]: where this device stands."""

import argparse
import json
import time
from typing import Optional

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args, short
from gitroot.device.etc import shown
from gitroot.device.status import collect


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not check the signatures of the releases")


def _when(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    info = collect(device, verify=not args.no_verify)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    _print_releases(info)
    _print_boot_loader(info["boot_loader"])
    _print_fetch(info["last_fetch"], info["pending_update"])
    _print_persistence(info["persistence"])
    return 0


def _print_releases(info: dict) -> None:
    """What is booted and served, what boots next, the trial and the good ones."""
    sig = info["signatures"]
    if info["state_error"]:
        print(f"state:         UNREADABLE: {info['state_error']} (the next pin, fetch or "
              "rollback rewrites it)")
    booted = info["booted"]
    print("booted:        " + (f"{short(booted['commit'])} ({booted['detail']})" if booted
                               else "unknown (not booted by gitroot)"))
    served = info["mount"]
    if served:
        print(f"served by:     {served.get('backend', '?')} ({served.get('binding', '?')}, "
              f"{served.get('library', '?')})")
    nb = info["next_boot"]
    print("next boot:     " + (f"{short(nb['commit'])} ({nb['detail']})" if nb
                               else "nothing bootable"))
    t = info["trial"]
    if t:
        print(f"trial:         {short(t['commit'])}, {t['tries_left']} of {t['tries']} tries left, "
              f"since {_when(t['since'])}"
              + (f"; signature: {sig['trial']['message']}" if 'trial' in sig else ""))
    else:
        print("trial:         none")
    print(f"last good:     {short(info['last_good'])}"
          + (f"; signature: {sig['last_good']['message']}" if 'last_good' in sig else ""))
    print(f"previous good: {short(info['previous_good'])}")
    if info["hold"]:
        print("upgrades:      held by a manual pin (gitroot pin --release resumes them)")
    if info["abandoned"]:
        a = info["abandoned"]
        print(f"abandoned:     {short(a['commit'])} (ran out of {a['tries']} tries)")


def _print_boot_loader(bl: Optional[dict]) -> None:
    """What the boot loader's own files say (nothing without a loader)."""
    if bl and "error" in bl:
        print(f"boot loader:   {bl['type']}: {bl['error']}")
    elif bl:
        line = f"boot loader:   {bl['type']}, boots next: {short(bl['default'])} " \
               f"({bl['default_role'] or 'no entry'})"
        if bl["trial"]:
            line += f"; trial {short(bl['trial']['commit'])}: " \
                    f"{bl['trial']['tries_left']} tries left"
        print(line)


def _print_fetch(fetch: Optional[dict], pending: Optional[dict]) -> None:
    """The last fetch's outcome and what a pending update would change."""
    if fetch:
        print(f"last fetch:    {_when(fetch['time'])}: {fetch['result']}: {fetch['message']}")
        for warning in fetch.get("warnings") or ():
            print(f"  warning:     {warning}")
    else:
        print("last fetch:    never")
    if pending and "error" not in pending:
        print(f"pending:       {pending['files_added']} added, {pending['files_changed']} "
              f"changed, {pending['files_removed']} removed; {pending['bytes']} bytes")


def _print_persistence(info: dict) -> None:
    """The kept /etc (merge origin, conflicts) and the data migrations."""
    etc = info["etc"]
    if etc is None:
        return
    if not etc["kept"]:
        print("/etc:          ephemeral (the release's own, not kept)")
    else:
        origin = f"merged from {short(etc['merged_from'])}" if etc["merged_from"] else \
            "copied from the release"
        print(f"/etc:          kept, {origin}; {len(etc['conflicts'])} conflict(s)")
        for c in etc["conflicts"]:
            beside = ", ".join(f"/etc/{shown(n)}" for n in (c["reject"], c["original"]) if n)
            print(f"  CONFLICT     /etc/{shown(c['path'])}: {c['reason']}"
                  + (f" (see {beside})" if beside else ""))
        if etc["conflicts"]:
            print("               gitroot etc diff PATH; gitroot etc resolve PATH [--take-release]")
    m = info["migrations"]
    pending = len(m["pending_up"]) + len(m["pending_down"])
    last = m["last_run"]
    print(f"migrations:    {len(m['applied'])} applied, {pending} pending"
          + (f"; last run {_when(last.get('time'))}: {last.get('result')}"
             + (f": {last['message']}" if last.get("message") else "") if last else ""))
    for problem in m["problems"]:
        print(f"  PROBLEM      {problem}")
