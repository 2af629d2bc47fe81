"""What ``gitroot status`` reports about a device, collected as data.

Reads the state, the boot record and the repository; changes nothing.
"""

import time
from typing import Optional

from gitroot.boot.state import StateStore, bootable, booted_record, releases_named_by_refs
from gitroot.boot.transitions import next_boot
from gitroot.device.context import Device
from gitroot.serve.daemon import read_record
from gitroot.errors import GitrootError


def _verdict(device: Device, commit: Optional[str]) -> Optional[dict]:
    if commit is None:
        return None
    from gitroot.signing.verify import verify_revision
    try:
        v = verify_revision(device.repo, commit, device.config.trusted_keys.trust_config(),
                            device.config.signature_policy)
    except GitrootError as err:
        return {"ok": False, "message": str(err)}
    return {"ok": True, "message": v.summary()}


def _repo(device: Device):
    try:
        return device.repo
    except GitrootError:
        return None


def collect(device: Device, verify: bool = True) -> dict:
    """Everything `gitroot status` shows, as plain JSON-able data.

    A state file that cannot be read is reported in ``state_error`` (status is
    how an operator finds out), not raised.
    """
    repo = _repo(device)
    state, state_error = StateStore(device.state_dir, repo).load_or_recover()
    booted = booted_record()
    # The same choice boot-select makes: releases missing from the
    # repository are passed over, the refs are the last resort.
    choice = next_boot(state, device.boot.update_revision, time.time(),
                       (lambda c: bootable(repo, c)) if repo is not None else (lambda c: True),
                       releases_named_by_refs(repo) if repo is not None else ())
    out = {
        "booted": booted,
        # how the root is served: back end, binding and libfuse, as the
        # boot path's mount recorded it (None when not booted by gitroot)
        "mount": read_record(),
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
        "state_error": state_error,
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
    from gitroot.device.persistence import collect as persistence
    out["persistence"] = persistence(device.state_dir, (booted or {}).get("commit"))
    if verify:
        for name in ("trial", "last_good"):
            commit = state.trial.commit if name == "trial" and state.trial else \
                (state.last_good if name == "last_good" else None)
            if commit:
                out["signatures"][name] = _verdict(device, commit)
    return out
