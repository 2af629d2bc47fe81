"""Signed commits (``gitroot commit --sign-key``, ``sign_commit_object``) and
``gitroot verify --full`` over a corrupted object store."""

import os
import subprocess
import zlib

import pygit2
import pytest

from conftest import gitroot_cmd, have
from gitroot.errors import CorruptObjectError
from gitroot.signing import make_signer, sign_commit_object, verify_commit_objects
from gitroot.signing.objects import split_commit
from signing_support import (OBJ_COMMIT, Repo, gitroot_outcome, gpg_home, gpg_key,
                             export_keyring, public_key, run, ssh_key, verify_home,
                             write_allowed_signers)

pytestmark = pytest.mark.skipif(not (have("ssh-keygen") and have("git")),
                                reason="needs ssh-keygen and git (openssh-client, git)")


@pytest.fixture(scope="module")
def ssh(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sshkeys")
    key = ssh_key(directory, "publisher", "ed25519")
    allowed = write_allowed_signers(directory / "allowed_signers",
                                    [f"publisher@example.com {public_key(key)}"])
    return key, allowed


@pytest.fixture(scope="module")
def pgp(tmp_path_factory):
    if not (have("gpg") and have("gpgv")):
        pytest.skip("needs gpg and gpgv (gnupg, gpgv)")
    base = tmp_path_factory.mktemp("gpg")
    home = gpg_home(base / "sign")
    key = gpg_key(home, "Publisher <publisher@example.com>")
    keyring = export_keyring(key, base / "trusted.gpg")
    check_home = verify_home(base / "verify", keyring)
    yield key, keyring, check_home
    for h in (home, check_home):
        subprocess.run(["gpgconf", "--homedir", h, "--kill", "all"], capture_output=True)


def make_tree(path):
    for name, text in {"etc/hostname": "device\n", "etc/motd": "hello\n",
                       "usr/bin/tool": "#!/bin/sh\necho tool\n"}.items():
        full = path / name
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)
    return path


def git_dir(*args, repo, env=None, check=False):
    return run("git", "--git-dir", repo, *args, env=env, check=check)


# -- gitroot commit --sign-key ----------------------------------------------------

def test_gitroot_commit_ssh_signed_verifies_with_git(tmp_path, ssh):
    key, allowed = ssh
    repo = str(tmp_path / "repo.git")
    commit = gitroot_cmd("commit", make_tree(tmp_path / "root"), "--repo", repo,
                         "--branch", "main", "--sign-key", key).stdout.strip()
    proc = git_dir("-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", commit,
                   repo=repo)
    assert proc.returncode == 0, proc.stderr
    out = gitroot_cmd("verify", "--repo", repo, "main", "--allowed-signers", allowed,
                      "--full").stdout
    assert "publisher@example.com" in out and "objects:" in out


def test_gitroot_commit_openpgp_signed_verifies_with_git(tmp_path, pgp, monkeypatch):
    key, keyring, check_home = pgp
    repo = str(tmp_path / "repo.git")
    monkeypatch.setenv("GNUPGHOME", key.home)
    commit = gitroot_cmd("commit", make_tree(tmp_path / "root"), "--repo", repo,
                         "--branch", "main", "--sign-key", key.fingerprint,
                         "--sign-format", "openpgp").stdout.strip()
    proc = git_dir("verify-commit", commit, repo=repo, env={"GNUPGHOME": check_home})
    assert proc.returncode == 0, proc.stderr
    out = gitroot_cmd("verify", "--repo", repo, commit, "--keyring", keyring).stdout
    assert key.fingerprint in out


# -- sign_commit_object ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ssh", "openpgp"])
def test_sign_commit_object_round_trip(tmp_path, ssh, request, fmt):
    repo = Repo(tmp_path / "repo")
    raw = repo.raw("HEAD")
    if fmt == "ssh":
        signer = make_signer(ssh[0], "ssh")
        trust = {"allowed_signers": ssh[1]}
        env = None
    else:
        key, keyring, check_home = request.getfixturevalue("pgp")
        signer = make_signer(key.fingerprint, "openpgp", gnupg_home=key.home)
        trust = {"keyring": keyring}
        env = {"GNUPGHOME": check_home}
    signed_raw = sign_commit_object(raw, signer)
    assert split_commit(signed_raw).payload == raw
    commit = repo.write(OBJ_COMMIT, signed_raw)
    repo.set_ref("refs/heads/main", commit)
    cfg = ["-c", f"gpg.ssh.allowedSignersFile={ssh[1]}"]
    assert repo.git(*cfg, "verify-commit", commit, env=env, check=False).returncode == 0
    assert gitroot_outcome(repo, "main", **trust).result == "good"
    with pytest.raises(ValueError):
        sign_commit_object(signed_raw, signer)


# -- verify --full ------------------------------------------------------------------

def corrupt_loose_object(repo: Repo, oid: str, data: bytes) -> None:
    """Replace a loose object's file with *data*, zlib-compressed as git stores it."""
    path = os.path.join(repo.path, ".git", "objects", oid[:2], oid[2:])
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(zlib.compress(data))


@pytest.fixture
def signed_repo(tmp_path, ssh):
    key, allowed = ssh
    repo = Repo(tmp_path / "repo")
    repo.commit("release", files={"etc/motd": "hello\n", "usr/bin/tool": "#!/bin/sh\n"},
                config=["gpg.format=ssh", f"user.signingkey={key}"], sign=True)
    return repo, allowed


def test_full_reports_corrupted_blob(signed_repo):
    repo, allowed = signed_repo
    blob = repo.rev("HEAD:etc/motd")
    ok = gitroot_cmd("verify", "--repo", repo.path, "HEAD", "--allowed-signers", allowed,
                     "--full")
    assert "present and intact" in ok.stdout
    corrupt_loose_object(repo, blob, b"blob 6\0h4ck3d")
    # the signature still holds: it covers the commit, not the blob...
    plain = gitroot_cmd("verify", "--repo", repo.path, "HEAD", "--allowed-signers", allowed)
    assert plain.returncode == 0
    assert repo.git("-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit",
                    "HEAD").returncode == 0
    # ...so --full is what catches it, naming the path, as git fsck does
    full = gitroot_cmd("verify", "--repo", repo.path, "HEAD", "--allowed-signers", allowed,
                       "--full", check=False)
    assert full.returncode == CorruptObjectError.exit_code, full.stderr
    assert "/etc/motd" in full.stderr and blob in full.stderr
    assert repo.git("fsck", "--full", check=False).returncode != 0


def test_full_hashes_itself_without_libgit2_check(signed_repo):
    """With libgit2's own hash check off, gitroot's hashing still finds it."""
    repo, _ = signed_repo
    blob = repo.rev("HEAD:usr/bin/tool")
    corrupt_loose_object(repo, blob, b"blob 10\0#!/bin/rm\n")
    option = pygit2.GIT_OPT_ENABLE_STRICT_HASH_VERIFICATION
    pygit2.option(option, 0)
    try:
        with pytest.raises(CorruptObjectError, match="/usr/bin/tool.*hashes to"):
            verify_commit_objects(pygit2.Repository(repo.path), repo.rev("HEAD"))
    finally:
        pygit2.option(option, 1)


def test_full_reports_missing_object_and_corrupt_tree(signed_repo):
    repo, allowed = signed_repo
    tree = repo.rev("HEAD:usr/bin")
    blob = repo.rev("HEAD:etc/motd")
    os.unlink(os.path.join(repo.path, ".git", "objects", blob[:2], blob[2:]))
    with pytest.raises(CorruptObjectError, match="/etc/motd: object .* is missing"):
        verify_commit_objects(pygit2.Repository(repo.path), repo.rev("HEAD"))
    corrupt_loose_object(repo, tree, b"tree 3\0xyz")
    proc = gitroot_cmd("verify", "--repo", repo.path, "HEAD", "--policy", "none", "--full",
                       check=False)
    assert proc.returncode == CorruptObjectError.exit_code
    # depth first in tree order: etc/ comes before usr/
    assert "/etc/motd" in proc.stderr


def test_full_with_wrong_object_type(tmp_path):
    """A tree entry naming a blob as a directory is corrupt, even if it hashes."""
    repo = Repo(tmp_path / "repo")
    r = pygit2.Repository(repo.path)
    blob = r.odb.write(3, b"not a tree")
    bad_tree = r.odb.write(2, b"40000 dir\0" + blob.raw)
    commit = r.create_commit(None, pygit2.Signature("a", "a@b"), pygit2.Signature("a", "a@b"),
                             "odd", bad_tree, [])
    with pytest.raises(CorruptObjectError, match="/dir: .* is a blob, expected a tree"):
        verify_commit_objects(r, str(commit))
