"""What ``gitroot status`` shows about the device's persistent data: the
booted release's /etc (kept or ephemeral, its merge's conflicts) and the
migrations (applied, pending, the last run).  Reads only."""

from typing import Optional

from gitroot.boot.persist import Layout, persist_dir_for
from gitroot.device import migrate


def layout_for(state_dir: str) -> Layout:
    return Layout(persist_dir_for(state_dir))


def collect(state_dir: str, booted: Optional[str], root: str = "/") -> dict:
    layout = layout_for(state_dir)
    out = {"dir": layout.root, "etc": None, "migrations": None}
    if booted:
        record = layout.merge_record(booted)
        out["etc"] = {"kept": False} if record is None else {
            "kept": True,
            "merged_from": record.get("from"),
            "conflicts": list(record.get("conflicts") or []),
            "resolved": list(record.get("resolved") or []),
            "merged_text": list(record.get("merged_text") or []),
        }
        # the running root is the booted release: its migrations are the ones due
        out["migrations"] = migrate.describe(layout, root)
    return out
