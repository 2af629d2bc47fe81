"""The FUSE adapter's errno mapping, against a fake view: no kernel, no
root, no repository (borg's fuse_test drives its operations the same way).

The real view is tested in test_vfs.py and through real mounts in
tests/integration/test_mount.py; here only the adapter's one job is checked:
each kind of view failure becomes the errno the kernel must see, and every
write is EROFS.
"""

import errno
import os

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


def _backend(name):
    try:
        return fusefs.load_backend(name).module
    except fusefs.MountError as err:
        pytest.skip(str(err))


def _libfuse2_dispatch(fs, op, *args):
    """fusepy calls operations(op, *args): the adapter raises OSError(errno)."""
    libfuse2 = _backend("libfuse2")
    ops = libfuse2._Operations(fs.view)
    try:
        return ops(op, *args)
    except OSError as err:
        return -err.errno


def _libfuse3_dispatch(fs, op, *args):
    """mfusepy calls methods directly through FUSE._wrapper: it answers -errno."""
    libfuse3 = _backend("libfuse3")
    method = getattr(fs, op)
    return libfuse3._FUSE._wrapper(object.__new__(libfuse3._FUSE), method, *args)


DISPATCHERS = {"libfuse2": _libfuse2_dispatch, "libfuse3": _libfuse3_dispatch}


@pytest.fixture(params=sorted(DISPATCHERS))
def dispatch(request):
    """Each back end's way of calling an operation and mapping its error."""
    return DISPATCHERS[request.param]


def fuse_errno(dispatch, fs, op, *args):
    answer = dispatch(fs, op, *args)
    assert isinstance(answer, int) and answer < 0, answer
    return -answer


@pytest.mark.parametrize("failure, expected", [
    (EntryError("bad manifest line"), errno.EIO),
    (FileNotFoundError(), errno.ENOENT),
    (NotADirectoryError(), errno.ENOTDIR),
    (IsADirectoryError(), errno.EISDIR),
    (PermissionError(errno.EACCES, "no"), errno.EACCES),
    (OSError(), errno.EIO),                        # an OSError without errno
    (KeyError("a defect in the view"), errno.EIO),  # never a crash of the daemon
])
def test_view_errors_become_errno(failure, expected, dispatch):
    fs = fusefs.GitrootFS(FakeView(failure))
    assert fuse_errno(dispatch, fs, "getattr", "/etc/passwd") == expected
    assert fusefs.errno_of(failure, "getattr", ("/etc/passwd",)) == expected


@pytest.mark.parametrize("op, args", [
    ("write", ("/f", b"x", 0, 0)), ("create", ("/f", 0o644)), ("unlink", ("/f",)),
    ("mkdir", ("/d", 0o755)), ("rename", ("/a", "/b")), ("chmod", ("/f", 0o600)),
    ("truncate", ("/f", 0)), ("setxattr", ("/f", "user.a", b"1", 0)),
])
def test_writes_are_erofs(op, args, dispatch):
    view = FakeView()
    assert fuse_errno(dispatch, fusefs.GitrootFS(view), op, *args) == errno.EROFS
    assert view.calls == []


def test_access_for_writing_is_erofs_and_for_reading_looks_up(dispatch):
    view = FakeView()
    fs = fusefs.GitrootFS(view)
    assert fuse_errno(dispatch, fs, "access", "/f", 2) == errno.EROFS      # W_OK
    assert dispatch(fs, "access", "/f", 4) == 0                            # R_OK
    assert view.calls == [("lookup", b"f")]


def test_paths_cross_as_latin1_bytes():
    view = FakeView()
    fs = fusefs.GitrootFS(view)
    fs.getattr("/")
    fs.getattr("/caf\xe9/\xff")
    assert view.calls == [("getattr", b"."), ("getattr", b"caf\xe9/\xff")]
    assert fs.readlink("/l") == "target\xff"


def test_missing_xattr_is_enodata(dispatch):
    fs = fusefs.GitrootFS(FakeView())
    assert fs.getxattr("/f", "user.a") == b"1"
    assert fuse_errno(dispatch, fs, "getxattr", "/f", "user.b") == errno.ENODATA


def test_a_binding_s_metadata_alone_tells_its_version(tmp_path):
    """What the initramfs hook copies of a binding's metadata is enough for
    its version to show (not "fusepy ?" in a booted device's status)."""
    import shutil
    import subprocess
    import sys
    # the first back end with a binding (the low-level one has none)
    backend = None
    for name in fusefs.BACKENDS:
        try:
            candidate = fusefs.load_backend(name)
        except fusefs.MountError:
            continue
        if candidate.module.DISTRIBUTION is not None:
            backend = candidate
            break
    assert backend is not None, "no FUSE binding installed"
    files = fusefs.binding_metadata(backend.module.DISTRIBUTION)
    assert files, backend.describe()
    for path in files:
        # the .dist-info or .egg-info directory, as the hook's copy_file keeps it
        copy = tmp_path / "site" / os.path.basename(os.path.dirname(path)) / os.path.basename(path)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    # -S: no site-packages, so only the copy can answer
    probe = ("import sys; sys.path.insert(0, sys.argv[1]);"
             "from importlib import metadata; print(metadata.version(sys.argv[2]))")
    version = subprocess.run([sys.executable, "-S", "-c", probe, str(tmp_path / "site"),
                              backend.module.DISTRIBUTION], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert version and version == fusefs.binding_version(backend.module.DISTRIBUTION)
    assert fusefs.binding_metadata("no-such-distribution-gitroot") == []
    assert fusefs.binding_metadata(None) == []
