"""gitroot status [--json]: where this device stands."""

import argparse
import json
import time

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
    sig = info["signatures"]
    if info["state_error"]:
        print(f"state:         UNREADABLE: {info['state_error']} (the next pin, fetch or "
              "rollback rewrites it)")
    booted = info["booted"]
    print(f"booted:        {short(booted['commit']) + ' (' + booted['detail'] + ')' if booted else 'unknown (not booted by gitroot)'}")
    served = info["mount"]
    if served:
        print(f"served by:     {served.get('backend', '?')} ({served.get('binding', '?')}, "
              f"{served.get('library', '?')})")
    nb = info["next_boot"]
    print(f"next boot:     {short(nb['commit']) + ' (' + nb['detail'] + ')' if nb else 'nothing bootable'}")
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
    f = info["last_fetch"]
    if f:
        print(f"last fetch:    {_when(f['time'])}: {f['result']}: {f['message']}")
        for warning in f.get("warnings") or ():
            print(f"  warning:     {warning}")
    else:
        print("last fetch:    never")
    p = info["pending_update"]
    if p and "error" not in p:
        print(f"pending:       {p['files_added']} added, {p['files_changed']} changed, "
              f"{p['files_removed']} removed; {p['bytes']} bytes")
    _print_persistence(info["persistence"])
    return 0


def _print_persistence(info: dict) -> None:
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
