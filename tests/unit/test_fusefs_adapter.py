"""The FUSE adapter's errno mapping, against a fake view: no kernel, no
root, no repository (borg's fuse_test drives its operations the same way).

The real view is tested in test_vfs.py and through real mounts in
tests/integration/test_mount.py; here only the adapter's one job is checked:
each kind of view failure becomes the errno the kernel must see, and every
write is EROFS.
"""

import errno

import pytest

from gitroot.serve import fusefs
from gitroot.serve.vfs import EntryError


class FakeView:
    """Answers getattr/readlink/xattrs by raising what the test asks for."""

    def __init__(self, failure=None, attrs=None):
        self.failure = failure
        self.attrs = attrs or {"st_mode": 0o100644, "st_ino": 7, "st_size": 3}
        self.calls = []

    def _answer(self, name, path, value):
        self.calls.append((name, path))
        if self.failure is not None:
            raise self.failure
        return value

    def getattr(self, path):
        return self._answer("getattr", path, self.attrs)

    def readlink(self, path):
        return self._answer("readlink", path, b"target\xff")

    def xattrs(self, path):
        return self._answer("xattrs", path, [(b"user.a", b"1")])

    def lookup(self, path):
        return self._answer("lookup", path, object())


def fuse_errno(fs, op, *args):
    with pytest.raises(fusefs.fuse.FuseOSError) as info:
        fs(op, *args)
    return info.value.errno


@pytest.mark.parametrize("failure, expected", [
    (EntryError("bad manifest line"), errno.EIO),
    (FileNotFoundError(), errno.ENOENT),
    (NotADirectoryError(), errno.ENOTDIR),
    (IsADirectoryError(), errno.EISDIR),
    (PermissionError(errno.EACCES, "no"), errno.EACCES),
    (OSError(), errno.EIO),                        # an OSError without errno
    (KeyError("a defect in the view"), errno.EIO),  # never a crash of the daemon
])
def test_view_errors_become_errno(failure, expected):
    fs = fusefs.GitrootFS(FakeView(failure))
    assert fuse_errno(fs, "getattr", "/etc/passwd") == expected


@pytest.mark.parametrize("op, args", [
    ("write", ("/f", b"x", 0, 0)), ("create", ("/f", 0o644)), ("unlink", ("/f",)),
    ("mkdir", ("/d", 0o755)), ("rename", ("/a", "/b")), ("chmod", ("/f", 0o600)),
    ("truncate", ("/f", 0)), ("setxattr", ("/f", "user.a", b"1", 0)),
])
def test_writes_are_erofs(op, args):
    view = FakeView()
    assert fuse_errno(fusefs.GitrootFS(view), op, *args) == errno.EROFS
    assert view.calls == []


def test_access_for_writing_is_erofs_and_for_reading_looks_up():
    view = FakeView()
    fs = fusefs.GitrootFS(view)
    assert fuse_errno(fs, "access", "/f", 2) == errno.EROFS      # W_OK
    assert fs("access", "/f", 4) == 0                            # R_OK
    assert view.calls == [("lookup", b"f")]


def test_paths_cross_as_latin1_bytes():
    view = FakeView()
    fs = fusefs.GitrootFS(view)
    fs("getattr", "/")
    fs("getattr", "/caf\xe9/\xff")
    assert view.calls == [("getattr", b"."), ("getattr", b"caf\xe9/\xff")]
    assert fs("readlink", "/l") == "target\xff"


def test_missing_xattr_is_enodata():
    fs = fusefs.GitrootFS(FakeView())
    assert fs("getxattr", "/f", "user.a") == b"1"
    assert fuse_errno(fs, "getxattr", "/f", "user.b") == errno.ENODATA
