"""The boot path's import closure stays small.

What the initramfs runs (``gitroot boot-helper``, which runs
``boot-select``, ``mount`` and ``boot-persist`` in one process, and each of
those verbs) must import nothing from the device, publisher or signing rooms, and none of
PyYAML, requests or cryptography: the initramfs copies exactly what these
imports reach (hooks/gitroot), so each one would grow every device's initrd
and its boot time.  Checked in a fresh interpreter per verb.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

FORBIDDEN_PREFIXES = ("gitroot.device", "gitroot.publish", "gitroot.signing",
                      "yaml", "requests", "urllib3", "cryptography")

PROBE = r"""
import json, sys
sys.argv = ["gitroot"] + sys.argv[1:]
from gitroot.cli import build_parser
argv = sys.argv[1:]
parser = build_parser(argv)
import gitroot.serve.daemon, gitroot.serve.fusefs  # what `mount` runs once parsed
if argv[0] == "boot-helper":  # what the helper loads after its first answer
    import gitroot.cli.boot_helper
    gitroot.cli.boot_helper.preload()
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("verb", ["boot-helper", "boot-select", "boot-persist", "mount"])
def test_boot_path_imports_nothing_it_must_not(verb):
    proc = subprocess.run([sys.executable, "-c", PROBE, verb], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    modules = json.loads(proc.stdout)
    bad = [m for m in modules if m.startswith(FORBIDDEN_PREFIXES)]
    assert not bad, f"{verb} imports {bad}"
    assert "gitroot.boot.state" in modules or verb == "mount"
    if verb == "boot-helper":
        # the helper serves every boot verb: their modules are what it loaded
        assert {"gitroot.cli.boot_select", "gitroot.cli.boot_persist",
                "gitroot.cli.mount", "gitroot.serve.daemon",
                "gitroot.serve.export"} <= set(modules)


def test_the_probe_would_see_a_forbidden_import():
    # control: the same probe does report the device room for a device verb
    proc = subprocess.run([sys.executable, "-c", PROBE.replace(
        "import gitroot.serve.daemon", "import gitroot.device.fetch, gitroot.serve.daemon"),
        "fetch"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert any(m.startswith("gitroot.device") for m in json.loads(proc.stdout))
