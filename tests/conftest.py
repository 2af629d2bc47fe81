"""Shared fixtures.

Tests never see the user's git configuration (as pygit2's own conftest does):
HOME and the git config search paths point into the test's tmp directory.
"""

import os
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def isolated_git_config(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "gitroot test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@gitroot.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "gitroot test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@gitroot.invalid")
    import pygit2

    for level in ("GIT_CONFIG_LEVEL_SYSTEM", "GIT_CONFIG_LEVEL_XDG",
                  "GIT_CONFIG_LEVEL_GLOBAL"):
        level_value = getattr(pygit2, level, None)
        if level_value is None:
            level_value = getattr(pygit2.enums.ConfigLevel, level.replace("GIT_CONFIG_LEVEL_", ""))
        pygit2.settings.search_path[level_value] = str(home)
    yield


def gitroot_cmd(*args, check=True, **kwargs):
    """Run the gitroot CLI in a subprocess with this interpreter."""
    cmd = [sys.executable, "-m", "gitroot", *map(str, args)]
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    kwargs.setdefault("env", env)
    proc = subprocess.run(cmd, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"gitroot {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def have(tool):
    return shutil.which(tool) is not None


def fuse_available():
    return os.path.exists("/dev/fuse") and have("fusermount") and os.geteuid() == 0


#: Each FUSE back end the mount can pick, with the Python modules it needs
#: (gitroot.serve.fusefs.BACKENDS).  Debian's library set has only fusepy;
#: .venv has both.  The low-level back end needs no binding, only libfuse 3.
FUSE_BINDINGS = {"libfuse3": ("mfusepy",), "libfuse2": ("fusepy", "fuse"), "lowlevel": ()}


def _has_binding(backend):
    import importlib.util
    if not FUSE_BINDINGS[backend]:
        from gitroot.serve.fusefs import find_libfuse3
        try:
            find_libfuse3()
        except ImportError:
            return False
        return True
    return any(importlib.util.find_spec(m) for m in FUSE_BINDINGS[backend])


@pytest.fixture(params=sorted(FUSE_BINDINGS))
def fuse_backend(request, monkeypatch):
    """Run the test once per FUSE back end (GITROOT_FUSE for every mount it
    starts); tests.mounts.Mount checks that the daemon really used it."""
    if not _has_binding(request.param):
        pytest.skip(f"{request.param}: its binding ({FUSE_BINDINGS[request.param] or 'libfuse 3'}) "
                    "is not installed for this interpreter")
    monkeypatch.setenv("GITROOT_FUSE", request.param)
    return request.param

# Real lighttpd servers (git smart HTTP, static files) for fetcher tests.
pytest_plugins = ("servers",)
