"""A publisher and a device driven through the real gitroot CLI, for tests
of the upgrade life cycle (tests/integration/test_lifecycle.py,
test_bundle.py)."""

import json
import os
import shutil
import time

from tests.conftest import REPO_ROOT, gitroot_cmd
from tests.signing_support import public_key, ssh_key, write_allowed_signers

BRANCH = "stable"


class Publisher:
    def __init__(self, base, server):
        self.base = base
        self.key = ssh_key(base, "release-key", "ed25519")
        self.other_key = ssh_key(base, "stranger-key", "ed25519")
        self.allowed = write_allowed_signers(
            base / "allowed_signers", [f"release@example.org {public_key(self.key)}"])
        self.repo = str(server.repos_dir / "os.git")
        self.url = server.repo_url("os.git")
        self.n = 0

    def tree(self, extra_files=0, big=0):
        self.n += 1
        src = self.base / f"src{self.n}"
        if src.exists():
            shutil.rmtree(src)
        (src / "boot").mkdir(parents=True)
        (src / "etc").mkdir()
        (src / "etc/os-release").write_text(f"release {self.n}\n")
        (src / "boot" / f"vmlinuz-6.1.0-{self.n}-amd64").write_bytes(b"kernel %d" % self.n)
        (src / "boot" / f"initrd.img-6.1.0-{self.n}-amd64").write_bytes(b"initrd %d" % self.n)
        for i in range(extra_files):
            (src / "etc" / f"file{i}").write_text(f"{self.n} {i}\n" * 10)
        if big:
            with open(src / "big.bin", "wb") as f:
                f.write(os.urandom(big))
        return str(src)

    def release(self, key=None, age=0, **kw):
        """Commit and sign the next release; *age* seconds backdates it."""
        src = self.tree(**kw)
        args = ["commit", src, "--repo", self.repo, "--branch", BRANCH,
                "-m", f"release {self.n}"]
        if key is not False:
            args += ["--sign-key", key or self.key]
        env = dict(os.environ)
        if age:
            env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"] = \
                f"@{int(time.time()) - age} +0000"
        return gitroot_cmd(*args, env=env).stdout.strip()


class Device:
    def __init__(self, base, publisher, **config):
        self.base = base
        self.repo = str(base / "device/repo.git")
        self.state_dir = str(base / "device/state")
        self.boot_dir = str(base / "device/boot")
        self.run_dir = str(base / "run")
        os.makedirs(self.boot_dir, exist_ok=True)
        settings = {
            "remotes": [publisher.url],
            "branch": BRANCH,
            "repository": self.repo,
            "state_dir": self.state_dir,
            "boot_dir": self.boot_dir,
            "trusted_keys": {"allowed_signers": publisher.allowed},
            "signature_policy": "strict",
            "tries": 2,
        }
        settings.update(config)
        self.config = str(base / "gitroot.yml")
        with open(self.config, "w") as f:
            json.dump(settings, f)          # JSON is YAML
        self.cmdline = "root=/dev/vda ro quiet"

    def env(self):
        return dict(os.environ, GITROOT_CMDLINE=self.cmdline, GITROOT_RUN_DIR=self.run_dir,
                    PYTHONPATH=REPO_ROOT)

    def run(self, *args, check=True):
        return gitroot_cmd(*args, "--config", self.config, check=check, env=self.env())

    def status(self):
        return json.loads(self.run("status", "--json").stdout)

    def boot(self):
        """What the initramfs does: choose (consuming a try) and record."""
        return self.run("boot-select").stdout.strip()

    def installed_kernel(self, commit):
        with open(os.path.join(self.boot_dir, "gitroot", commit, "vmlinuz"), "rb") as f:
            return f.read()
