"""Helpers shared by the signing tests: real keys, real git, verdicts to compare.

Every key is made here with the real ``ssh-keygen`` or ``gpg`` in the
test's tmp directory; every git command runs with the isolated config that
``conftest.isolated_git_config`` sets up, plus ``-c`` options.
"""

import os
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional

import pygit2

from conftest import gitroot_cmd
from gitroot import errors
from gitroot.signing import TrustConfig, verify_revision
from gitroot.signing.objects import split_commit, split_tag

OBJ_COMMIT = 1
OBJ_TAG = 4


def run(*cmd, input=None, env=None, check=True, cwd=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([str(c) for c in cmd], input=input, capture_output=True,
                          env=full_env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


# -- keys ----------------------------------------------------------------------

def ssh_key(directory, name: str, key_type: str, bits: Optional[int] = None) -> str:
    path = os.path.join(str(directory), name)
    if not os.path.exists(path):
        cmd = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", name, "-f", path]
        if bits:
            cmd[2:2] = ["-b", str(bits)]
        run(*cmd)
    return path


def public_key(path: str) -> str:
    with open(path + ".pub") as f:
        return " ".join(f.read().split()[:2])


def write_allowed_signers(path, lines: List[str]) -> str:
    with open(path, "w") as f:
        f.write("# test allowed signers\n" + "".join(line + "\n" for line in lines))
    return str(path)


@dataclass
class GpgKey:
    home: str
    fingerprint: str
    uid: str


def gpg(home: str, *args, input=None, check=True) -> subprocess.CompletedProcess:
    return run("gpg", "--batch", "--no-tty", "--homedir", home, *args, input=input,
               check=check)


def gpg_home(directory) -> str:
    os.makedirs(str(directory), mode=0o700, exist_ok=True)
    return str(directory)


def gpg_key(home: str, uid: str, algo: str = "ed25519", expire: str = "never",
            faked_time: Optional[str] = None) -> GpgKey:
    extra = ["--faked-system-time", faked_time] if faked_time else []
    gpg(home, *extra, "--passphrase", "", "--quick-gen-key", uid, algo, "sign", expire)
    listing = gpg(home, "--with-colons", "--list-secret-keys", uid).stdout.decode()
    fprs = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
    return GpgKey(home, fprs[0], uid)


def export_keyring(key: GpgKey, path, armor: bool = False) -> str:
    args = ["--armor"] if armor else []
    data = gpg(key.home, *args, "--export", key.fingerprint).stdout
    with open(path, "ab") as f:
        f.write(data)
    return str(path)


def verify_home(directory, keyring: str) -> str:
    """A GnuPG home holding only the public keys of *keyring*: git's view of trust."""
    home = gpg_home(directory)
    gpg(home, "--import", keyring)
    return home


# -- repositories -----------------------------------------------------------

class Repo:
    """A non-bare repository made with real git."""

    def __init__(self, path):
        self.path = str(path)
        run("git", "init", "-q", "-b", "main", self.path)
        self.commit("first", files={"etc/hostname": "device\n"})

    def git(self, *args, env=None, check=True) -> subprocess.CompletedProcess:
        return run("git", "-C", self.path, *args, env=env, check=check)

    def commit(self, message: str, files: Optional[Dict[str, str]] = None,
               config: List[str] = (), sign: bool = False, env=None) -> str:
        for name, text in (files or {}).items():
            full = os.path.join(self.path, name)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)
            self.git("add", name)
        cfg = [x for c in config for x in ("-c", c)]
        self.git(*cfg, "commit", "-q", "--allow-empty", "-m", message,
                 *(["-S"] if sign else []), env=env)
        return self.rev("HEAD")

    def rev(self, rev: str) -> str:
        return self.git("rev-parse", rev).stdout.decode().strip()

    def raw(self, rev: str) -> bytes:
        kind = self.git("cat-file", "-t", rev).stdout.decode().strip()
        return self.git("cat-file", kind, rev).stdout

    def write(self, type_num: int, data: bytes) -> str:
        """Store *data* exactly, bypassing git's own checks (as an attacker would)."""
        return str(pygit2.Repository(self.path).odb.write(type_num, data))

    def set_ref(self, ref: str, oid: str) -> None:
        self.git("update-ref", ref, oid)

    def forge_tag(self, name: str, raw: bytes) -> str:
        oid = self.write(OBJ_TAG, raw)
        self.set_ref(f"refs/tags/{name}", oid)
        return oid


# -- verdicts -------------------------------------------------------------------

SSH_CONFIG = ["gpg.format=ssh"]


@dataclass
class Outcome:
    """gitroot's verdict on one revision, from the library and from the CLI."""

    result: str                     # "good", or the error class name
    error: Optional[Exception]
    verdict: object
    cli_status: int
    cli_stdout: str
    cli_stderr: str


def gitroot_outcome(repo: Repo, rev: str, allowed_signers: Optional[str] = None,
                    keyring: Optional[str] = None, policy: str = "strict") -> Outcome:
    trust = TrustConfig(allowed_signers=allowed_signers, keyring=keyring)
    result, error, verdict = "good", None, None
    try:
        verdict = verify_revision(pygit2.Repository(repo.path), rev, trust, policy)
    except errors.GitrootError as err:
        result, error = type(err).__name__, err
    args = ["verify", "--repo", repo.path, rev, "--policy", policy]
    if allowed_signers:
        args += ["--allowed-signers", allowed_signers]
    if keyring:
        args += ["--keyring", keyring]
    proc = gitroot_cmd(*args, check=False)
    expected_status = error.exit_code if error else 0
    assert proc.returncode == expected_status, (proc.returncode, proc.stderr)
    if error is not None:
        assert str(error) in proc.stderr
    return Outcome(result, error, verdict, proc.returncode, proc.stdout, proc.stderr)


def git_verify(repo: Repo, rev: str, allowed_signers: Optional[str] = None,
               gnupg_home: Optional[str] = None,
               verb: Optional[str] = None) -> subprocess.CompletedProcess:
    """``git verify-tag`` for a tag object, ``git verify-commit`` otherwise."""
    if verb is None:
        kind = repo.git("cat-file", "-t", rev).stdout.decode().strip()
        verb = "verify-tag" if kind == "tag" else "verify-commit"
    cfg = []
    if allowed_signers:
        cfg += ["-c", f"gpg.ssh.allowedSignersFile={allowed_signers}"]
    env = {"GNUPGHOME": gnupg_home} if gnupg_home else None
    return repo.git(*cfg, verb, rev, env=env, check=False)


def ssh_keygen_verify(repo: Repo, rev: str, allowed_signers: str,
                      directory) -> subprocess.CompletedProcess:
    """``ssh-keygen -Y find-principals`` then ``-Y verify``, as git runs them."""
    raw = repo.raw(rev)
    kind = repo.git("cat-file", "-t", rev).stdout.decode().strip()
    signed = split_tag(raw) if kind == "tag" else split_commit(raw)
    sig_path = os.path.join(str(directory), "check.sig")
    with open(sig_path, "wb") as f:
        f.write(signed.signature or b"")
    time_opt = []
    if signed.timestamp:
        import time
        time_opt = ["-Overify-time=" + time.strftime("%Y%m%d%H%M%S",
                                                       time.localtime(signed.timestamp))]
    found = run("ssh-keygen", "-Y", "find-principals", "-f", allowed_signers, "-s",
                sig_path, *time_opt, check=False)
    if found.returncode != 0:
        return found
    principal = found.stdout.decode().splitlines()[0].strip()
    return run("ssh-keygen", "-Y", "verify", "-f", allowed_signers, "-I", principal,
               "-n", "git", "-s", sig_path, *time_opt, input=signed.payload, check=False)
