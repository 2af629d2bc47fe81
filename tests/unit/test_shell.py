"""Static checks: the initramfs boot script and hook pass ``shellcheck -s
dash``; the Python passes pyflakes.

They run under dash (or busybox sh) in the initramfs and in mkinitramfs,
where a bashism fails only at boot; shellcheck catches them here.
"""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = ["initramfs/gitroot", "hooks/gitroot", "hooks/post-update"]


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_dash(script):
    proc = subprocess.run(["shellcheck", "-s", "dash", os.path.join(REPO_ROOT, script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_parses_with_dash(script):
    dash = shutil.which("dash")
    if dash is None:
        pytest.skip("dash is not installed")
    proc = subprocess.run([dash, "-n", os.path.join(REPO_ROOT, script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("hook", ["hooks/gitroot", "hooks/post-update"])
def test_hook_is_executable(hook):
    assert os.access(os.path.join(REPO_ROOT, hook), os.X_OK)


# -- Python: pyflakes ---------------------------------------------------------

def test_pyflakes_finds_nothing():
    """No unused imports or names, no undefined names, anywhere in the
    package, the tests, the benchmarks or the examples."""
    pytest.importorskip("pyflakes", reason="pyflakes is not installed "
                        "(apt-get install python3-pyflakes)")
    proc = subprocess.run([sys.executable, "-m", "pyflakes", "gitroot", "tests", "bench",
                           "examples"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
