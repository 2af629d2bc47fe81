"""What a power cut during a fetch leaves in the repository, and its removal.

git writes a fetched pack as ``objects/pack/tmp_pack_*`` (and its index as
``tmp_idx_*``, ``tmp_rev_*``), loose objects as ``objects/XX/tmp_obj_*``,
marks a pack it is still adding refs for with a ``.keep`` file that says
``fetch-pack``, and updates a ref through ``REF.lock``.  A git killed
before it renames them away leaves them behind: the repository stays
consistent (git ignores temporary files), but a partial pack can be as big
as the release it was bringing, on a medium that has room for a few
releases, and git itself only prunes temporary files after two weeks, so
each power cut during a transfer would cost that space again.  A ref lock
left behind is worse: every later update of that ref fails ("Unable to
create '...lock': File exists"), so the device could never fetch again.

Only what was written **before this boot** is removed: no process of an
earlier boot is alive, so such a file is abandoned for certain, whereas a
newer one may belong to a git that runs now (a fetch's own auto-gc).  A
device whose clock stepped backwards at boot sees its leftovers as new and
keeps them for one more boot; nothing that is in use is ever removed.

Threading: called by the fetcher under the fetch lock (gc, the only other
writer of packs, holds it too).
"""

import logging
import os
from typing import Iterator, List, Optional

log = logging.getLogger(__name__)

# index-pack's, pack-objects' and the object writer's temporary files
_TEMPORARY = ("tmp_pack_", "tmp_idx_", "tmp_rev_", "tmp_mtimes_", "tmp_obj_")


def boot_time() -> Optional[float]:
    """When this boot began (``btime`` in /proc/stat), None if unknown."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _fetch_keep(path: str) -> bool:
    """A .keep file that git fetch wrote for itself (not one an operator made)."""
    try:
        with open(path, "rb") as f:
            return f.read(64).startswith(b"fetch-pack")
    except OSError:
        return False


def _candidates(repo_path: str) -> Iterator[str]:
    objects = os.path.join(repo_path, "objects")
    for top, dirs, files in os.walk(objects):
        # only git's own directories: the pack directory and the 2-digit fan-out
        rel = os.path.relpath(top, objects)
        if rel == ".":
            dirs[:] = [d for d in dirs if d == "pack" or (len(d) == 2 and d.isalnum())]
        else:
            dirs[:] = []
        for name in files:
            path = os.path.join(top, name)
            if name.startswith(_TEMPORARY):
                yield path
            elif rel == "pack" and name.endswith(".keep") and _fetch_keep(path):
                yield path
    for top, dirs, files in os.walk(os.path.join(repo_path, "refs")):
        for name in files:
            if name.endswith(".lock"):
                yield os.path.join(top, name)
    for name in ("packed-refs.lock", "HEAD.lock", "shallow.lock", "config.lock"):
        yield os.path.join(repo_path, name)


def remove_interrupted_fetch(repo_path: str, before: Optional[float] = None) -> List[str]:
    """Remove what a git killed in an earlier boot left in *repo_path*;
    return the paths removed.  *before*: remove only files last written
    before this time (default: this boot's start; unknown -> nothing)."""
    before = boot_time() if before is None else before
    if before is None:
        return []
    removed = []
    for path in _candidates(repo_path):
        try:
            if os.lstat(path).st_mtime >= before:
                continue
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("cannot remove %s, left by an interrupted fetch: %s", path,
                        err.strerror)
            continue
        removed.append(path)
    if removed:
        log.warning("removed %d file(s) an interrupted fetch left in %s: %s", len(removed),
                    repo_path, ", ".join(os.path.relpath(p, repo_path) for p in removed))
    return removed
