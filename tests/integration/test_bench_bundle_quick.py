"""The upgrade-size benchmark keeps working: ``bench/bundle.py --quick``
produces every figure, and the gitroot bundles it makes (git and delta
format) really upgrade OLD to NEW (the benchmark checks the tree id itself,
and applies each bundle on a device holding OLD).

No size is asserted here: on generated trees the comparison means little;
the figures that count come from the Debian run (docs/performance.md).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which(tool) is None, reason=f"needs {tool} ({package})")
    for tool, package in (("ostree", "Debian package ostree"), ("xz", "xz-utils"),
                          ("zstd", "zstd"), ("bsdiff", "bsdiff"))
]


def test_quick_bundle_benchmark_produces_all_figures(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "bundle.py"), "--quick",
         "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(out.read_text())["workloads"]
    sizes = result["sizes"]
    for key in ("tar_zst", "tar_zst_19", "gitroot_full_bundle", "git_fetch", "git_bundle",
                "xz_git_bundle", "zstd_git_bundle", "gitroot_bundle", "gitroot_delta_bundle",
                "ostree_delta", "ostree_delta_inline", "ostree_total"):
        assert sizes[key] > 0, key
    assert result["delta_files"] > 0
    assert result["seconds"]["apply_bundle"] > 0
    assert result["seconds"]["apply_delta_bundle"] > 0
    assert sizes["ostree_fallback"] >= 0
    assert sizes["ostree_total"] == sizes["ostree_delta"] + sizes["ostree_fallback"]
    assert "the gitroot bundle upgrades OLD to NEW exactly" in proc.stderr
    for kind in ("git", "delta"):
        assert f"the {kind} bundle applied on a device holding OLD gives NEW's tree" \
            in proc.stderr
    # the table is printed with a verdict against each OSTree figure
    assert "OSTree static delta (defaults)" in proc.stdout
    assert proc.stdout.count("MET ") + proc.stdout.count("MISS") == 6
    assert proc.stdout.count("s CPU) vs ") == 6
    # nothing left in the work directory but the JSON
    assert sorted(os.listdir(tmp_path)) == ["quick.json"]
