"""What a fetch cut off in an earlier boot left behind (gitroot.device.leftovers)."""

import os

from gitroot.device.leftovers import boot_time, remove_interrupted_fetch


def _file(path, text="x", mtime=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_only_git_temporaries_from_before_the_boot_are_removed(tmp_path):
    repo = str(tmp_path / "repo.git")
    boot = 1_000_000.0
    old, new = boot - 60, boot + 60
    stale = [
        _file(f"{repo}/objects/pack/tmp_pack_AbC123", mtime=old),
        _file(f"{repo}/objects/pack/tmp_idx_AbC123", mtime=old),
        _file(f"{repo}/objects/ab/tmp_obj_Xy", mtime=old),
        _file(f"{repo}/objects/pack/pack-1.keep", "fetch-pack 123 on host\n", mtime=old),
        _file(f"{repo}/refs/gitroot/incoming/main.lock", mtime=old),
        _file(f"{repo}/packed-refs.lock", mtime=old),
    ]
    kept = [
        _file(f"{repo}/objects/pack/tmp_pack_New", mtime=new),          # a git of this boot
        _file(f"{repo}/refs/heads/main.lock", mtime=new),
        _file(f"{repo}/objects/pack/pack-2.keep", "kept by the operator\n", mtime=old),
        _file(f"{repo}/objects/pack/pack-1.pack", mtime=old),
        _file(f"{repo}/objects/info/tmp_pack_notgit", mtime=old),      # not git's place
        _file(f"{repo}/refs/gitroot/last-good", mtime=old),
    ]
    removed = remove_interrupted_fetch(repo, before=boot)
    assert sorted(removed) == sorted(stale)
    assert not any(map(os.path.exists, stale))
    assert all(map(os.path.exists, kept))


def test_nothing_is_removed_when_the_boot_time_is_unknown(tmp_path, monkeypatch):
    repo = str(tmp_path / "repo.git")
    leftover = _file(f"{repo}/objects/pack/tmp_pack_A", mtime=0)
    monkeypatch.setattr("gitroot.device.leftovers.boot_time", lambda: None)
    assert remove_interrupted_fetch(repo) == []
    assert os.path.exists(leftover)


def test_boot_time_is_in_the_past():
    import time
    assert 0 < boot_time() < time.time()
