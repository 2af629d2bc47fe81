"""SSH signatures: gitroot's verdict against git's and ssh-keygen's, case by case.

Keys come from the real ssh-keygen, signatures from real ``git tag -s`` /
``git commit -S`` (gpg.format=ssh) and from ``gitroot tag``; each case is
checked by ``gitroot verify`` (library and CLI), ``git verify-tag`` /
``git verify-commit``, and ``ssh-keygen -Y find-principals`` + ``-Y verify``.
"""

import base64
import struct

import pygit2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from conftest import gitroot_cmd, have
from gitroot import errors
from gitroot.signing import TrustConfig, sshsig, verify_revision
from gitroot.signing.objects import format_tag, split_commit, split_tag
from signing_support import (OBJ_COMMIT, Repo, git_verify, gitroot_outcome, public_key,
                             run, ssh_key, ssh_keygen_verify, write_allowed_signers)

pytestmark = pytest.mark.skipif(not (have("ssh-keygen") and have("git")),
                                reason="needs ssh-keygen and git (openssh-client, git)")

KEY_TYPES = {
    "ed25519": ("ed25519", None),
    "ecdsa256": ("ecdsa", 256),
    "ecdsa384": ("ecdsa", 384),
    "ecdsa521": ("ecdsa", 521),
    "rsa": ("rsa", 3072),
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sshkeys")
    made = {name: ssh_key(directory, name, t, bits) for name, (t, bits) in KEY_TYPES.items()}
    made["stranger"] = ssh_key(directory, "stranger", "ed25519")
    return made


@pytest.fixture
def world(tmp_path, keys):
    """A repository and an allowed-signers file trusting every key but the stranger's."""
    repo = Repo(tmp_path / "repo")
    allowed = write_allowed_signers(tmp_path / "allowed_signers", [
        f'{name}@example.com namespaces="git" {public_key(path)}'
        for name, path in keys.items() if name != "stranger"])
    return repo, allowed, tmp_path


def fingerprint_of(key_path: str) -> str:
    out = run("ssh-keygen", "-l", "-E", "sha256", "-f", key_path + ".pub").stdout.decode()
    return out.split()[1]


def ssh_config(key_path: str):
    return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key_path}"]


def git_tag(repo: Repo, key_path: str, name: str, target: str = "HEAD",
            message: str = "release", env=None) -> str:
    repo.git(*ssh_config(key_path), "tag", "-s", "-m", message, name, target, env=env)
    return f"refs/tags/{name}"


def assert_agree(repo, rev, allowed, tmp_path, expected, policy="strict", keygen=True):
    """gitroot says *expected*; git and ssh-keygen agree on good / not good."""
    outcome = gitroot_outcome(repo, rev, allowed_signers=allowed, policy=policy)
    assert outcome.result == expected, outcome.error
    git = git_verify(repo, rev, allowed)
    assert (git.returncode == 0) == (expected == "good"), git.stderr
    if keygen:
        keygen_result = ssh_keygen_verify(repo, rev, allowed, tmp_path)
        assert (keygen_result.returncode == 0) == (expected == "good"), keygen_result.stderr
    return outcome


# -- good signatures ------------------------------------------------------------

@pytest.mark.parametrize("key_name", list(KEY_TYPES))
def test_good_tag_by_git(world, keys, key_name):
    repo, allowed, tmp = world
    rev = git_tag(repo, keys[key_name], "v1")
    out = assert_agree(repo, rev, allowed, tmp, "good")
    fpr = fingerprint_of(keys[key_name])
    assert out.verdict.verified and out.verdict.format == "ssh"
    assert out.verdict.fingerprint == fpr
    assert out.verdict.principal == f"{key_name}@example.com"
    assert out.verdict.tag_name == "v1"
    assert out.verdict.commit_id == repo.rev("HEAD")
    assert out.verdict.signed_object_id == repo.rev("refs/tags/v1")
    assert fpr in out.cli_stdout and f"{key_name}@example.com" in out.cli_stdout


@pytest.mark.parametrize("key_name", ["ed25519", "ecdsa256", "rsa"])
def test_good_commit_by_git(world, keys, key_name):
    repo, allowed, tmp = world
    commit = repo.commit("signed", files={"etc/motd": "hi\n"},
                         config=["gpg.format=ssh", f"user.signingkey={keys[key_name]}"],
                         sign=True)
    out = assert_agree(repo, commit, allowed, tmp, "good")
    assert out.verdict.tag_name is None
    assert out.verdict.commit_id == out.verdict.signed_object_id == commit
    assert out.verdict.fingerprint == fingerprint_of(keys[key_name])


@pytest.mark.parametrize("key_name", list(KEY_TYPES))
def test_gitroot_tag_verifies_with_git(world, keys, key_name):
    repo, allowed, tmp = world
    gitroot_cmd("tag", "--repo", repo.path, "v2", "HEAD", "--sign-key", keys[key_name],
                "-m", "release two\n\nwith a body")
    assert_agree(repo, "refs/tags/v2", allowed, tmp, "good")
    repo.git("fsck", "--strict")
    assert repo.git("tag", "-l", "--format=%(contents:subject)", "v2").stdout \
        == b"release two\n"


def test_rsa_sha2_256_signature(world, keys):
    """ssh-keygen signs RSA with rsa-sha2-512; craft an rsa-sha2-256 one too."""
    repo, allowed, tmp = world
    with open(keys["rsa"], "rb") as f:
        private = serialization.load_ssh_private_key(f.read(), password=None)
    key_blob = base64.b64decode(public_key(keys["rsa"]).split()[1])
    payload = format_tag(repo.rev("HEAD"), "commit", "v256",
                         b"gitroot test <test@gitroot.invalid> 1700000000 +0000", b"rsa 256\n")
    sig = sshsig.SshSignature(key_blob, "git", b"", "sha512", b"")
    raw_sig = private.sign(sshsig.signed_data(sig, payload), padding.PKCS1v15(),
                           hashes.SHA256())
    armored = armor(key_blob, "git", "sha512",
                    _s(b"rsa-sha2-256") + _s(raw_sig))
    repo.forge_tag("v256", payload + armored)
    assert_agree(repo, "refs/tags/v256", allowed, tmp, "good")


# -- tampering ----------------------------------------------------------------------

def test_tag_message_altered(world, keys):
    repo, allowed, tmp = world
    git_tag(repo, keys["ed25519"], "v1", message="release one")
    raw = repo.raw("refs/tags/v1").replace(b"release one", b"release 0ne")
    repo.forge_tag("v1", raw)
    out = assert_agree(repo, "refs/tags/v1", allowed, tmp, "BadSignatureError")
    assert fingerprint_of(keys["ed25519"]) in str(out.error)
    assert "tag v1" in str(out.error)


def test_commit_message_altered(world, keys):
    repo, allowed, tmp = world
    commit = repo.commit("signed message", sign=True,
                         config=["gpg.format=ssh", f"user.signingkey={keys['ed25519']}"])
    forged = repo.write(OBJ_COMMIT, repo.raw(commit).replace(b"signed message",
                                                              b"signed massage"))
    repo.set_ref("refs/heads/main", forged)
    out = assert_agree(repo, forged, allowed, tmp, "BadSignatureError")
    assert forged in str(out.error)


def test_tagged_object_altered(world, keys):
    repo, allowed, tmp = world
    first = repo.rev("HEAD")
    git_tag(repo, keys["ed25519"], "v1")
    evil = repo.commit("evil", files={"etc/shadow": "root::0:0\n"})
    raw = repo.raw("refs/tags/v1").replace(first.encode(), evil.encode())
    repo.forge_tag("v1", raw)
    assert_agree(repo, "refs/tags/v1", allowed, tmp, "BadSignatureError")


def test_signature_pasted_from_another_tag(world, keys):
    repo, allowed, tmp = world
    git_tag(repo, keys["ed25519"], "good", message="good release")
    evil = repo.commit("evil", files={"sbin/init": "#!/bin/sh\nrm -rf /\n"})
    git_tag(repo, keys["stranger"], "evil", target=evil, message="good release")
    good = split_tag(repo.raw("refs/tags/good"))
    bad = split_tag(repo.raw("refs/tags/evil"))
    repo.forge_tag("evil", bad.payload + good.signature)
    assert_agree(repo, "refs/tags/evil", allowed, tmp, "BadSignatureError")


# -- trust ----------------------------------------------------------------------------

def test_untrusted_key(world, keys):
    repo, allowed, tmp = world
    git_tag(repo, keys["stranger"], "v1")
    out = assert_agree(repo, "refs/tags/v1", allowed, tmp, "UntrustedSignatureError")
    assert fingerprint_of(keys["stranger"]) in str(out.error)
    assert out.error.fingerprint == fingerprint_of(keys["stranger"])


def test_no_allowed_signers_configured_is_untrusted(world, keys, tmp_path):
    repo, _, _ = world
    git_tag(repo, keys["ed25519"], "v1")
    pgp_only = tmp_path / "empty.gpg"
    pgp_only.write_bytes(b"")
    out = gitroot_outcome(repo, "refs/tags/v1", keyring=str(pgp_only))
    assert out.result == "UntrustedSignatureError"


def test_signature_made_for_another_namespace(world, keys):
    repo, allowed, tmp = world
    payload = format_tag(repo.rev("HEAD"), "commit", "v1",
                         b"gitroot test <test@gitroot.invalid> 1700000000 +0000", b"ns\n")
    sig = run("ssh-keygen", "-Y", "sign", "-n", "file", "-f", keys["ed25519"],
              input=payload).stdout
    repo.forge_tag("v1", payload + sig)
    out = assert_agree(repo, "refs/tags/v1", allowed, tmp, "BadSignatureError")
    assert "namespace 'file'" in str(out.error)


def test_key_not_allowed_for_git_namespace(world, keys, tmp_path):
    repo, _, tmp = world
    allowed = write_allowed_signers(tmp_path / "file_only", [
        f'ed25519@example.com namespaces="file,!git" {public_key(keys["ed25519"])}'])
    git_tag(repo, keys["ed25519"], "v1")
    # ssh-keygen -Y find-principals ignores namespaces, so only git and -Y verify judge it
    out = assert_agree(repo, "refs/tags/v1", allowed, tmp, "UntrustedSignatureError")
    assert "namespace" in str(out.error)


def test_valid_before_in_the_past(world, keys, tmp_path):
    repo, _, tmp = world
    allowed = write_allowed_signers(tmp_path / "retired", [
        f'ed25519@example.com valid-before="20200101Z" {public_key(keys["ed25519"])}'])
    git_tag(repo, keys["ed25519"], "v1")
    out = assert_agree(repo, "refs/tags/v1", allowed, tmp, "KeyValidityError")
    assert "expired" in str(out.error)
    assert fingerprint_of(keys["ed25519"]) in str(out.error)
    # Like git, the window is judged at the signed tagger time: a release
    # signed before the key was retired stays valid.
    git_tag(repo, keys["ed25519"], "old", env={"GIT_COMMITTER_DATE": "2019-06-01T00:00:00Z"})
    assert_agree(repo, "refs/tags/old", allowed, tmp, "good")


def test_valid_after_in_the_future(world, keys, tmp_path):
    repo, _, tmp = world
    allowed = write_allowed_signers(tmp_path / "future", [
        f'ed25519@example.com valid-after="29990101" {public_key(keys["ed25519"])}'])
    git_tag(repo, keys["ed25519"], "v1")
    out = assert_agree(repo, "refs/tags/v1", allowed, tmp, "KeyValidityError")
    assert "not valid until" in str(out.error)


def test_ref_name_differs_from_signed_tag_name(world, keys):
    """A server may present signed tag v1 as v2: good signature, but a warning."""
    repo, allowed, tmp = world
    git_tag(repo, keys["ed25519"], "v1")
    repo.set_ref("refs/tags/v2", repo.rev("refs/tags/v1"))
    out = assert_agree(repo, "refs/tags/v2", allowed, tmp, "good")
    assert out.verdict.tag_name == "v1"
    assert any("named 'v1'" in w for w in out.verdict.warnings)
    assert "named 'v1'" in out.cli_stderr


# -- malformed and unsupported ------------------------------------------------------

def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def armor(key_blob: bytes, namespace: str, hash_alg: str, signature: bytes) -> bytes:
    blob = (b"SSHSIG" + struct.pack(">I", 1) + _s(key_blob) + _s(namespace.encode())
            + _s(b"") + _s(hash_alg.encode()) + _s(signature))
    text = base64.b64encode(blob)
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return (b"-----BEGIN SSH SIGNATURE-----\n" + b"\n".join(lines)
            + b"\n-----END SSH SIGNATURE-----\n")


def _mangle(signature: bytes, how: str) -> bytes:
    lines = signature.rstrip(b"\n").split(b"\n")
    if how == "truncated":
        return b"\n".join(lines[:-2]) + b"\n"
    if how == "not-base64":
        lines[2] = b"!!!!" + lines[2][4:]
    elif how == "cut-blob":
        # valid base64 and armor, but the SSHSIG blob ends early
        blob = base64.b64decode(b"".join(lines[1:-1]))[:60]
        text = base64.b64encode(blob)
        lines = [lines[0], text, lines[-1]]
    elif how == "no-magic":
        blob = b"XXHSIG" + base64.b64decode(b"".join(lines[1:-1]))[6:]
        lines = [lines[0], base64.b64encode(blob), lines[-1]]
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("how", ["truncated", "not-base64", "cut-blob", "no-magic"])
def test_malformed_armor(world, keys, how):
    repo, allowed, tmp = world
    git_tag(repo, keys["ed25519"], "v1")
    signed = split_tag(repo.raw("refs/tags/v1"))
    repo.forge_tag("v1", signed.payload + _mangle(signed.signature, how))
    assert_agree(repo, "refs/tags/v1", allowed, tmp, "MalformedSignatureError")


def test_malformed_commit_signature(world, keys):
    repo, allowed, tmp = world
    commit = repo.commit("signed", sign=True,
                         config=["gpg.format=ssh", f"user.signingkey={keys['ed25519']}"])
    raw = repo.raw(commit)
    signed = split_commit(raw)
    forged = repo.write(OBJ_COMMIT, raw.replace(b" -----END SSH SIGNATURE-----\n", b""))
    assert split_commit(repo.raw(forged)).payload == signed.payload
    assert_agree(repo, forged, allowed, tmp, "MalformedSignatureError")


def _mpint(value: int) -> bytes:
    return _s(value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _ssh_knows_dsa() -> bool:
    """Whether this OpenSSH still has DSA (``ssh-dss``): 9.x does, 10.0 dropped it."""
    listed = run("ssh", "-Q", "key", check=False).stdout.decode().split()
    return "ssh-dss" in listed


def test_unsupported_dsa_key(world, tmp_path):
    """gitroot refuses DSA (``ssh-dss``): deprecated, and not among the key
    types it checks.  OpenSSH 9.x, and so git, still accepts it; OpenSSH 10
    dropped DSA and can no longer make such a key, so the key and its SSHSIG
    signature are made with cryptography, byte for byte as ssh-keygen made
    them."""
    repo, _, tmp = world
    private = dsa.generate_private_key(key_size=1024)
    numbers = private.public_key().public_numbers()
    key_blob = (_s(b"ssh-dss") + _mpint(numbers.parameter_numbers.p)
                + _mpint(numbers.parameter_numbers.q) + _mpint(numbers.parameter_numbers.g)
                + _mpint(numbers.y))
    allowed = write_allowed_signers(tmp_path / "dsa_signers", [
        "dsa@example.com ssh-dss " + base64.b64encode(key_blob).decode()])
    payload = format_tag(repo.rev("HEAD"), "commit", "v1",
                         b"gitroot test <test@gitroot.invalid> 1700000000 +0000", b"dsa\n")
    sig = sshsig.SshSignature(key_blob, "git", b"", "sha512", b"")
    r_value, s_value = decode_dss_signature(
        private.sign(sshsig.signed_data(sig, payload), hashes.SHA1()))
    # ssh-dss signature (RFC 4253 6.6): r and s, 160 bits each
    raw_sig = r_value.to_bytes(20, "big") + s_value.to_bytes(20, "big")
    repo.forge_tag("v1", payload + armor(key_blob, "git", "sha512",
                                         _s(b"ssh-dss") + _s(raw_sig)))
    out = gitroot_outcome(repo, "refs/tags/v1", allowed_signers=allowed)
    assert out.result == "UnsupportedSignatureError"
    assert "ssh-dss" in str(out.error)
    # OpenSSH 9.x verifies the crafted signature (so it is a real DSA
    # signature); OpenSSH 10 cannot, and git with it refuses too
    openssh_has_dsa = _ssh_knows_dsa()
    assert (git_verify(repo, "refs/tags/v1", allowed).returncode == 0) == openssh_has_dsa
    keygen = ssh_keygen_verify(repo, "refs/tags/v1", allowed, tmp)
    assert (keygen.returncode == 0) == openssh_has_dsa, keygen.stderr


def test_unknown_key_type_crafted(world, tmp_path):
    """No sk- key can be made without a token, so craft an SSHSIG whose key
    type is a name nobody knows; ssh-keygen and git reject it too."""
    repo, _, tmp = world
    key_blob = _s(b"ssh-unknown@example.com") + _s(b"\x01" * 32)
    allowed = write_allowed_signers(tmp_path / "odd", [
        "odd@example.com ssh-unknown@example.com " + base64.b64encode(key_blob).decode()])
    payload = format_tag(repo.rev("HEAD"), "commit", "v1",
                         b"gitroot test <test@gitroot.invalid> 1700000000 +0000", b"odd\n")
    signature = armor(key_blob, "git", "sha512",
                      _s(b"ssh-unknown@example.com") + _s(b"\x02" * 64))
    repo.forge_tag("v1", payload + signature)
    out = assert_agree(repo, "refs/tags/v1", allowed, tmp, "UnsupportedSignatureError")
    assert "ssh-unknown@example.com" in str(out.error)


# -- unsigned revisions and policies ------------------------------------------------

def test_lightweight_tag(world):
    repo, allowed, _ = world
    repo.git("tag", "light", "HEAD")
    out = gitroot_outcome(repo, "light", allowed_signers=allowed)
    assert out.result == "NoSignatureError"
    assert "light" in str(out.error)
    assert git_verify(repo, "light", allowed, verb="verify-tag").returncode != 0
    assert git_verify(repo, "light", allowed, verb="verify-commit").returncode != 0


def test_unsigned_annotated_tag_of_signed_commit(world, keys):
    """An annotated tag without a signature falls back to its commit's."""
    repo, allowed, tmp = world
    commit = repo.commit("signed", sign=True,
                         config=["gpg.format=ssh", f"user.signingkey={keys['ed25519']}"])
    repo.git("tag", "-a", "-m", "unsigned", "v1", commit)
    out = gitroot_outcome(repo, "refs/tags/v1", allowed_signers=allowed)
    assert out.result == "good" and out.verdict.signed_object_id == commit
    assert any("not signed" in w for w in out.verdict.warnings)
    assert git_verify(repo, "refs/tags/v1", allowed).returncode != 0
    assert git_verify(repo, commit, allowed).returncode == 0


POLICY_TABLE = [
    # (case, policy, expected result, verified)
    ("unsigned", "strict", "NoSignatureError", None),
    ("unsigned", "sloppy", "good", False),
    ("unsigned", "none", "good", False),
    ("good", "strict", "good", True),
    ("good", "sloppy", "good", True),
    ("good", "none", "good", False),
    ("untrusted", "strict", "UntrustedSignatureError", None),
    ("untrusted", "sloppy", "UntrustedSignatureError", None),
    ("untrusted", "none", "good", False),
    ("bad", "strict", "BadSignatureError", None),
    ("bad", "sloppy", "BadSignatureError", None),
    ("bad", "none", "good", False),
]


@pytest.mark.parametrize("case,policy,expected,verified", POLICY_TABLE)
def test_policy(world, keys, case, policy, expected, verified):
    repo, allowed, _ = world
    if case == "unsigned":
        repo.git("tag", "v1", "HEAD")
        rev = "v1"
    else:
        rev = git_tag(repo, keys["stranger" if case == "untrusted" else "ed25519"], "v1",
                      message="policy")
        if case == "bad":
            repo.forge_tag("v1", repo.raw(rev).replace(b"policy", b"p0licy"))
    out = gitroot_outcome(repo, rev, allowed_signers=allowed, policy=policy)
    assert out.result == expected, out.error
    if expected == "good":
        assert out.verdict.verified is verified
        assert out.verdict.policy == policy
        assert out.verdict.commit_id == repo.rev("HEAD")
        if not verified:
            assert out.verdict.warnings
            assert "warning" in out.cli_stderr
    # git itself knows no policy: only the good case verifies
    git = git_verify(repo, rev, allowed, verb="verify-tag")
    assert (git.returncode == 0) == (case == "good")


def test_bad_policy_and_missing_trust_are_usage_errors(world):
    repo, allowed, _ = world
    with pytest.raises(errors.UsageError):
        verify_revision(pygit2.Repository(repo.path), "HEAD",
                        TrustConfig(allowed_signers=allowed), "lenient")
    proc = gitroot_cmd("verify", "--repo", repo.path, "HEAD", "--policy", "lenient",
                       check=False)
    assert proc.returncode == 2         # argparse refuses it
    out = gitroot_outcome(repo, "HEAD")  # no trusted keys at all
    assert out.result == "UsageError" and out.cli_status == 2


def test_unknown_revision(world):
    repo, allowed, _ = world
    out = gitroot_outcome(repo, "no-such-tag", allowed_signers=allowed)
    assert out.result == "RepositoryError"
