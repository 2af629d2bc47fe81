"""The benchmark keeps working: ``bench/mount.py --quick`` produces every figure.

No timing is asserted here; the targets are judged by reading the
benchmark's own output (docs/performance.md).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, fuse_available

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not fuse_available(), reason="needs root, /dev/fuse and fusermount"),
    pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs squashfs-tools"),
    pytest.mark.skipif(not os.path.exists("/proc/sys/vm/drop_caches"),
                       reason="needs /proc/sys/vm/drop_caches"),
]


def squashfs_supported():
    with open("/proc/filesystems") as f:
        if "squashfs" in f.read():
            return True
    return subprocess.run(["modprobe", "-n", "squashfs"], capture_output=True).returncode == 0


def test_quick_benchmark_produces_all_figures(tmp_path):
    if not squashfs_supported():
        pytest.skip("the kernel has no squashfs")
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "mount.py"), "--quick",
         "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    medians = result["medians"]
    # the libfuse 2 fallback runs side by side wherever fusepy is installed
    assert set(medians) == {"native", "squashfs", "gitroot", "libfuse2"}
    for system in ("native", "squashfs", "gitroot", "libfuse2"):
        for key in ("walk_cold", "walk_warm", "read_cold", "read_warm",
                    "start_cold", "start_warm"):
            assert medians[system][key] > 0, (system, key)
    for system in ("gitroot", "libfuse2"):
        for key in ("mount_first_stat", "mount_first_stat_cold", "daemon_private_mb",
                    "daemon_private_mb_idle"):
            assert medians[system][key] > 0, (system, key)
    assert result["variants"]["libfuse2"]["backend"] == "libfuse2"
    # the systems served the same tree
    assert len(set(result["entries"].values())) == 1, result["entries"]
    assert len(set(result["tar_bytes"].values())) == 1, result["tar_bytes"]
    assert {t["figure"] for t in result["targets"]} == {
        "walk_cold", "walk_warm", "read_cold", "read_warm", "start_cold", "start_warm",
        "mount_first_stat", "daemon_private_mb"}
    # the table is printed, with a verdict per target
    assert "targets (the gitroot column):" in proc.stdout
    assert proc.stdout.count("MET ") + proc.stdout.count("MISS ") == 8


def test_quick_device_benchmark_mounts_what_devices_fetched(tmp_path):
    """--device: five signed releases fetched by git smart HTTP and by static
    bundles (real lighttpd on 127.0.0.1), the last mounted from each device's
    repository beside the publisher's; they must serve the same tree."""
    if not squashfs_supported():
        pytest.skip("the kernel has no squashfs")
    if shutil.which("lighttpd") is None and not os.path.exists("/usr/sbin/lighttpd"):
        pytest.skip("needs lighttpd")
    out = tmp_path / "device.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "mount.py"), "--quick", "--device",
         "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert set(result["medians"]) == {"native", "squashfs", "publisher", "device-http",
                                      "device-bundle"}
    assert len(set(result["entries"].values())) == 1, result["entries"]
    assert len(set(result["tar_bytes"].values())) == 1, result["tar_bytes"]
    assert "fetch seconds per release: device-http" in result["description"]
