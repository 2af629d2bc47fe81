"""OpenPGP signatures: gitroot (through gpgv) against git verify-tag / verify-commit.

Keys are made with the real gpg in temporary GnuPG homes.  git verifies in a
home that holds only the trusted public keys (what gitroot's --keyring
holds), so both sides judge against the same set of keys.
"""

import os
import subprocess

import pytest

from conftest import gitroot_cmd, have
from gitroot.signing.objects import format_tag, split_tag
from signing_support import (OBJ_COMMIT, Repo, export_keyring, git_verify, gitroot_outcome,
                             gpg, gpg_home, gpg_key, verify_home)

pytestmark = pytest.mark.skipif(not (have("gpg") and have("gpgv") and have("git")),
                                reason="needs gpg, gpgv and git (gnupg, gpgv, git)")


class Keys:
    def __init__(self, base):
        self.home = gpg_home(base / "sign")
        self.alice = gpg_key(self.home, "Alice <alice@example.com>", "ed25519")
        self.bob = gpg_key(self.home, "Bob <bob@example.com>", "rsa3072")
        self.stranger = gpg_key(self.home, "Mallory <mallory@example.com>", "ed25519")
        # made and used in 2020 with one day to live: expired today
        self.old = gpg_key(self.home, "Old <old@example.com>", "ed25519", "1d",
                           faked_time="20200101T000000!")
        self.keyring = str(base / "trusted.gpg")
        self.armored_keyring = str(base / "trusted.asc")
        for key in (self.alice, self.bob, self.old):
            export_keyring(key, self.keyring)
            export_keyring(key, self.armored_keyring, armor=True)
        self.verify_home = verify_home(base / "verify", self.keyring)
        self.homes = [self.home, self.verify_home]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = Keys(tmp_path_factory.mktemp("gpg"))
    yield made
    for home in made.homes:     # gpg started an agent per home; stop ours
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"],
                       capture_output=True, check=False)


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path / "repo")


def git_tag(repo, keys, key, name, target="HEAD", message="release"):
    repo.git("-c", f"user.signingkey={key.fingerprint}", "tag", "-s", "-m", message,
             name, target, env={"GNUPGHOME": keys.home})
    return f"refs/tags/{name}"


def assert_agree(repo, keys, rev, expected, keyring=None, policy="strict"):
    outcome = gitroot_outcome(repo, rev, keyring=keyring or keys.keyring, policy=policy)
    assert outcome.result == expected, outcome.error
    git = git_verify(repo, rev, gnupg_home=keys.verify_home)
    assert (git.returncode == 0) == (expected == "good"), git.stderr
    return outcome


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_good_tag_by_git(repo, keys, who):
    key = getattr(keys, who)
    rev = git_tag(repo, keys, key, "v1")
    out = assert_agree(repo, keys, rev, "good")
    assert out.verdict.format == "openpgp"
    assert out.verdict.fingerprint == key.fingerprint
    assert out.verdict.principal == key.uid
    assert key.fingerprint in out.cli_stdout


def test_good_commit_by_git(repo, keys):
    commit = repo.commit("signed", files={"etc/motd": "hi\n"}, sign=True,
                         config=[f"user.signingkey={keys.alice.fingerprint}"],
                         env={"GNUPGHOME": keys.home})
    out = assert_agree(repo, keys, commit, "good")
    assert out.verdict.signed_object_id == commit


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_gitroot_tag_verifies_with_git(repo, keys, who):
    key = getattr(keys, who)
    gitroot_cmd("tag", "--repo", repo.path, "v2", "HEAD", "--sign-key", key.fingerprint,
                "--gnupg-home", keys.home, "-m", "release two")
    assert_agree(repo, keys, "refs/tags/v2", "good")
    repo.git("fsck", "--strict")


def test_format_guessed_and_armored_keyring(repo, keys):
    # no --sign-format: a key id that is not a file means OpenPGP
    gitroot_cmd("tag", "--repo", repo.path, "v3", "HEAD", "--sign-key",
                keys.alice.fingerprint, "--gnupg-home", keys.home)
    out = assert_agree(repo, keys, "refs/tags/v3", "good", keyring=keys.armored_keyring)
    assert out.verdict.fingerprint == keys.alice.fingerprint


def test_tag_message_altered(repo, keys):
    git_tag(repo, keys, keys.alice, "v1", message="release one")
    repo.forge_tag("v1", repo.raw("refs/tags/v1").replace(b"release one", b"release 0ne"))
    out = assert_agree(repo, keys, "refs/tags/v1", "BadSignatureError")
    assert keys.alice.fingerprint in str(out.error) and "tag v1" in str(out.error)


def test_commit_altered(repo, keys):
    commit = repo.commit("signed message", sign=True,
                         config=[f"user.signingkey={keys.alice.fingerprint}"],
                         env={"GNUPGHOME": keys.home})
    forged = repo.write(OBJ_COMMIT, repo.raw(commit).replace(b"signed message",
                                                              b"signed massage"))
    assert_agree(repo, keys, forged, "BadSignatureError")


def test_tagged_object_altered(repo, keys):
    first = repo.rev("HEAD")
    git_tag(repo, keys, keys.alice, "v1")
    evil = repo.commit("evil", files={"etc/shadow": "root::0:0\n"})
    repo.forge_tag("v1", repo.raw("refs/tags/v1").replace(first.encode(), evil.encode()))
    assert_agree(repo, keys, "refs/tags/v1", "BadSignatureError")


def test_signature_pasted_from_another_tag(repo, keys):
    git_tag(repo, keys, keys.alice, "good", message="same words")
    evil = repo.commit("evil", files={"sbin/init": "#!/bin/sh\n"})
    git_tag(repo, keys, keys.stranger, "evil", target=evil, message="same words")
    good = split_tag(repo.raw("refs/tags/good"))
    bad = split_tag(repo.raw("refs/tags/evil"))
    repo.forge_tag("evil", bad.payload + good.signature)
    assert_agree(repo, keys, "refs/tags/evil", "BadSignatureError")


def test_untrusted_key(repo, keys):
    git_tag(repo, keys, keys.stranger, "v1")
    out = assert_agree(repo, keys, "refs/tags/v1", "UntrustedSignatureError")
    assert keys.stranger.fingerprint[-16:] in str(out.error)


def test_expired_key(repo, keys):
    payload = format_tag(repo.rev("HEAD"), "commit", "v1",
                         b"gitroot test <test@gitroot.invalid> 1577840400 +0000", b"old\n")
    signature = gpg(keys.home, "--faked-system-time", "20200101T010000!",
                    "--local-user", keys.old.fingerprint, "--detach-sign", "--armor",
                    input=payload).stdout
    repo.forge_tag("v1", payload + signature)
    out = assert_agree(repo, keys, "refs/tags/v1", "KeyValidityError")
    assert keys.old.fingerprint in str(out.error) and "expired" in str(out.error)


def _mangle(signature: bytes, how: str) -> bytes:
    lines = signature.rstrip(b"\n").split(b"\n")
    if how == "truncated":
        lines = lines[:len(lines) // 2]
    elif how == "not-base64":
        lines[3] = b"!!!!" + lines[3][4:]
    elif how == "empty-armor":
        lines = [lines[0], b"", lines[-1]]
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("how", ["truncated", "not-base64", "empty-armor"])
def test_malformed_armor(repo, keys, how):
    git_tag(repo, keys, keys.alice, "v1")
    signed = split_tag(repo.raw("refs/tags/v1"))
    repo.forge_tag("v1", signed.payload + _mangle(signed.signature, how))
    assert_agree(repo, keys, "refs/tags/v1", "MalformedSignatureError")


def _gpg_version():
    """(major, minor) of the gpg that git runs: ``gpg (GnuPG) 2.2.40`` -> (2, 2)."""
    first = subprocess.run(["gpg", "--version"], capture_output=True, text=True,
                           check=True).stdout.splitlines()[0]
    major, minor = first.split()[-1].split(".")[:2]
    return int(major), int(minor)


def test_missing_end_line(repo, keys):
    """Armor whose checksum and END lines were cut off: gitroot calls it
    malformed, as ssh-keygen does for SSH armor.  gpg has changed its mind:
    GnuPG 2.2 (Debian 12), and so git, accepts it; GnuPG 2.4 (Debian 13)
    refuses it ("premature eof (no CRC)")."""
    git_tag(repo, keys, keys.alice, "v1")
    signed = split_tag(repo.raw("refs/tags/v1"))
    cut = b"\n".join(signed.signature.rstrip(b"\n").split(b"\n")[:-2]) + b"\n"
    repo.forge_tag("v1", signed.payload + cut)
    out = gitroot_outcome(repo, "refs/tags/v1", keyring=keys.keyring)
    assert out.result == "MalformedSignatureError"
    git = git_verify(repo, "refs/tags/v1", gnupg_home=keys.verify_home)
    if _gpg_version() < (2, 4):
        assert git.returncode == 0, git.stderr
    else:
        assert git.returncode != 0
        assert b"premature eof" in git.stderr, git.stderr


def test_x509_signature_is_unsupported(repo, keys):
    git_tag(repo, keys, keys.alice, "v1")
    signed = split_tag(repo.raw("refs/tags/v1"))
    x509 = signed.signature.replace(b"PGP SIGNATURE", b"SIGNED MESSAGE")
    repo.forge_tag("v1", signed.payload + x509)
    outcome = gitroot_outcome(repo, "refs/tags/v1", keyring=keys.keyring)
    assert outcome.result == "UnsupportedSignatureError"
    # git hands it to gpgsm, which (installed or not) cannot verify it
    assert git_verify(repo, "refs/tags/v1", gnupg_home=keys.verify_home).returncode != 0


def test_lightweight_tag(repo, keys):
    repo.git("tag", "light", "HEAD")
    out = gitroot_outcome(repo, "light", keyring=keys.keyring)
    assert out.result == "NoSignatureError"
    assert git_verify(repo, "light", gnupg_home=keys.verify_home,
                      verb="verify-tag").returncode != 0


@pytest.mark.parametrize("policy,expected", [("strict", "UntrustedSignatureError"),
                                             ("sloppy", "UntrustedSignatureError"),
                                             ("none", "good")])
def test_policies_on_untrusted_signature(repo, keys, policy, expected):
    git_tag(repo, keys, keys.stranger, "v1")
    out = gitroot_outcome(repo, "refs/tags/v1", keyring=keys.keyring, policy=policy)
    assert out.result == expected
    if expected == "good":
        assert not out.verdict.verified and out.verdict.warnings


def test_signing_with_unknown_key_fails_cleanly(repo, keys):
    proc = gitroot_cmd("tag", "--repo", repo.path, "v9", "HEAD", "--sign-key",
                       "0000000000000000DEADBEEF", "--gnupg-home", keys.home, check=False)
    assert proc.returncode == 27, proc.stderr
    assert proc.stderr.startswith("gitroot: error: gpg could not sign")
    assert "Traceback" not in proc.stderr
    assert repo.git("tag", "-l").stdout == b""


def test_keyring_never_read_from_user_home(repo, keys, monkeypatch):
    """gpgv must not fall back to ~/.gnupg or $GNUPGHOME: only --keyring counts."""
    git_tag(repo, keys, keys.alice, "v1")
    monkeypatch.setenv("GNUPGHOME", keys.verify_home)   # trusts alice
    empty = os.path.join(repo.path, "empty.gpg")
    with open(empty, "wb"):
        pass
    out = gitroot_outcome(repo, "refs/tags/v1", keyring=empty)
    assert out.result == "UntrustedSignatureError"
