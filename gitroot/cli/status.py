"""gitroot status [--json]: where this device stands."""

import argparse
import json
import time

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args, short
from gitroot.errors import GitrootError
from gitroot.boot.state import booted_record, next_boot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not check the signatures of the releases")


def _verdict(device, commit):
    if commit is None:
        return None
    from gitroot.signing.verify import TrustConfig, verify_revision
    keys = device.config.trusted_keys
    try:
        v = verify_revision(device.repo, commit,
                            TrustConfig(allowed_signers=keys.allowed_signers,
                                        keyring=keys.keyring),
                            device.config.signature_policy)
    except GitrootError as err:
        return {"ok": False, "message": str(err)}
    return {"ok": True, "message": v.summary()}


def _boot_loader(device):
    from gitroot.device.bootloader import loader_status
    cfg = device.config
    try:
        status = loader_status(cfg.bootloader.type, cfg.boot_dir)
    except GitrootError as err:
        return {"type": cfg.bootloader.type, "error": str(err)}
    if status is None:
        return None
    return {"type": status.loader, "default": status.default,
            "default_role": status.default_role,
            "trial": None if status.trial is None else
            {"commit": status.trial.commit, "tries_left": status.trial.tries},
            "entries": status.entries}


def collect(device, verify: bool = True) -> dict:
    store = device.store(with_repo=False)
    state = store.load()
    booted = booted_record()
    choice = next_boot(state, device.boot.update_revision)
    out = {
        "booted": booted,
        "next_boot": None if choice is None else
        {"commit": choice.commit, "reason": choice.reason, "detail": choice.detail},
        "trial": None if state.trial is None else dict(vars(state.trial)),
        "last_good": state.last_good,
        "previous_good": state.previous_good,
        "hold": state.hold,
        "abandoned": None if state.abandoned is None else dict(vars(state.abandoned)),
        "last_fetch": None if state.last_fetch is None else dict(vars(state.last_fetch)),
        "pending_update": None,
        "signatures": {},
        "boot_loader": _boot_loader(device),
    }
    base = (booted or {}).get("commit") or state.last_good
    if state.trial is not None and base and base != state.trial.commit:
        try:
            from gitroot.device.diff import diff_commits
            d = diff_commits(device.repo, base, state.trial.commit)
            out["pending_update"] = {"from": base, "to": state.trial.commit,
                                     "files_added": d.added, "files_removed": d.removed,
                                     "files_changed": d.changed, "bytes": d.bytes}
        except GitrootError as err:
            out["pending_update"] = {"error": str(err)}
    if verify:
        for name in ("trial", "last_good"):
            commit = state.trial.commit if name == "trial" and state.trial else \
                (state.last_good if name == "last_good" else None)
            if commit:
                out["signatures"][name] = _verdict(device, commit)
    return out


def _when(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    info = collect(device, verify=not args.no_verify)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    sig = info["signatures"]
    booted = info["booted"]
    print(f"booted:        {short(booted['commit']) + ' (' + booted['detail'] + ')' if booted else 'unknown (not booted by gitroot)'}")
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
    bl = info["boot_loader"]
    if bl and "error" in bl:
        print(f"boot loader:   {bl['type']}: {bl['error']}")
    elif bl:
        line = f"boot loader:   {bl['type']}, boots next: {short(bl['default'])} " \
               f"({bl['default_role'] or 'no entry'})"
        if bl["trial"]:
            line += f"; trial {short(bl['trial']['commit'])}: " \
                    f"{bl['trial']['tries_left']} tries left"
        print(line)
    f = info["last_fetch"]
    if f:
        print(f"last fetch:    {_when(f['time'])}: {f['result']}: {f['message']}")
    else:
        print("last fetch:    never")
    p = info["pending_update"]
    if p and "error" not in p:
        print(f"pending:       {p['files_added']} added, {p['files_changed']} changed, "
              f"{p['files_removed']} removed; {p['bytes']} bytes")
    return 0
