#!/bin/bash
# The life of a release, on one machine: a publisher signs and publishes
# releases, a device fetches, checks, tries, keeps or refuses them.
#
# Usage: bash examples/lifecycle.sh [WORKDIR]     (as root; `bash .ci/example`
#        installs what it needs first, then runs this)
#
# Everything happens below WORKDIR (default: a new directory in /tmp), which
# is kept afterwards:
#   publisher/   the release key and the root trees of each release
#   srv/         what a web server on 127.0.0.1 serves: git/os.git (git's
#                smart HTTP, through git http-backend) and www/releases/
#                (static bundles and their index.json)
#   device/      the device: its configuration, repository, state, boot
#                directory and a mount point
#
# The "device" is a directory, not a machine: booting is simulated with
# `gitroot boot-select`, the command the initramfs runs to choose what to
# mount (a real boot in QEMU is what tests/system/test_boot_qemu.py does).
#
# Every command is printed ("$ ...") before its output.  `gitroot` here is
# `$PYTHON -m gitroot` and `sample_tree` is `$PYTHON tests/sample_tree.py`
# (PYTHON: default .venv/bin/python, else python3).
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x "$repo_root/.venv/bin/python" ] && PYTHON=$repo_root/.venv/bin/python
fi
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
W=${1:-$(mktemp -d /tmp/gitroot-example-XXXXXX)}
mkdir -p "$W"
W=$(cd "$W" && pwd)
cd "$W"

gitroot() { "$PYTHON" -m gitroot "$@"; }
sample_tree() { "$PYTHON" "$repo_root/tests/sample_tree.py" "$@"; }

# publish_release N: release N of the sample root tree, committed and
# signed on the stable branch of the git server; its id goes to release-N.id.
publish_release() {
    run sample_tree release "$1" "publisher/rootfs-$1"
    run gitroot commit "publisher/rootfs-$1" --repo srv/git/os.git --branch stable \
        -m "release $1" --sign-key publisher/release-key
    git --git-dir srv/git/os.git rev-parse stable >"release-$1.id"
}

step=0
chapter() { step=$((step + 1)); printf '\n== %d. %s\n' "$step" "$*"; }
say() { printf '%s\n' "$@" | fold -s -w 76 | sed 's/^/   /'; }
# show CMD...: print the command as one would type it
show() {
    local arg line="$"
    for arg in "$@"; do
        case "$arg" in
            "" | *[!A-Za-z0-9_./:=@%^,+-]*) line="$line '${arg//\'/\'\\\'\'}'" ;;
            *) line="$line $arg" ;;
        esac
    done
    printf '\n%s\n' "$line"
}
# run CMD...: print it, run it, indent its output; stop the story if it fails
run() {
    show "$@"
    "$@" 2>&1 | sed 's/^/    /'
}
# refused CMD...: the same for a command that must fail (and say why)
refused() {
    show "$@"
    local status=0
    "$@" >"$W/.out" 2>&1 || status=$?
    sed 's/^/    /' "$W/.out"
    if [ "$status" -eq 0 ]; then
        echo "!! that should have been refused" >&2
        exit 1
    fi
    echo "    (exit status $status)"
}

lighttpd_pid=
cleanup() {
    if mountpoint -q "$W/device/mnt" 2>/dev/null; then
        fusermount -u "$W/device/mnt" || true
    fi
    if [ -n "$lighttpd_pid" ]; then
        kill "$lighttpd_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

printf 'gitroot life cycle example, in %s\n' "$W"

# -----------------------------------------------------------------------------
chapter "The publisher makes a signing key"
say "Releases are signed commits. The device will trust exactly this key," \
    "through an allowed-signers file (git's format)."
mkdir -p publisher srv/git srv/www/releases device
run ssh-keygen -q -t ed25519 -N "" -C release@example.org -f publisher/release-key
echo "release@example.org $(cut -d' ' -f1,2 publisher/release-key.pub)" \
    >device/allowed_signers
run cat device/allowed_signers

# -----------------------------------------------------------------------------
chapter "Release 1: commit and sign a root tree"
say "The sample root tree has every awkward kind of metadata: setuid and" \
    "sticky bits, owners, device nodes, a fifo, hard links, xattrs (a file" \
    "capability), odd file names, nanosecond mtimes, a 50 MB file."
publish_release 1
R1=$(cat release-1.id)
run git -c gpg.ssh.allowedSignersFile=device/allowed_signers --git-dir srv/git/os.git log --format="%h %s (signature: %G? %GS)" stable

# -----------------------------------------------------------------------------
chapter "Publish it: a git server and a static bundle directory on 127.0.0.1"
say "One lighttpd serves both: git http-backend for git's smart HTTP at" \
    "/git/, plain files at /releases/ (the configuration of docs/server.md)."
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >srv/lighttpd.conf <<EOF
server.modules = ("mod_alias", "mod_cgi", "mod_setenv")
server.document-root = "$W/srv/www"
server.bind = "127.0.0.1"
server.port = $port
server.pid-file = "$W/srv/lighttpd.pid"
server.errorlog = "$W/srv/error.log"
mimetype.assign = ("" => "application/octet-stream")
alias.url = ("/git/" => "/usr/lib/git-core/git-http-backend/")
\$HTTP["url"] =~ "^/git(/|\$)" {
    cgi.assign = ("" => "")
    setenv.add-environment = (
        "GIT_PROJECT_ROOT" => "$W/srv/git",
        "GIT_HTTP_EXPORT_ALL" => "1",
    )
}
EOF
run cat srv/lighttpd.conf
run lighttpd -f srv/lighttpd.conf
lighttpd_pid=$(cat srv/lighttpd.pid)
git_url=http://127.0.0.1:$port/git/os.git
static_url=http://127.0.0.1:$port/releases/
run gitroot bundle --repo srv/git/os.git --to stable --publish srv/www/releases/
run git ls-remote "$git_url"

# -----------------------------------------------------------------------------
chapter "The device, with release 1 as its last good release"
say "Its configuration names the git server, the branch and the trusted" \
    "key; strict: only releases signed by that key are accepted." \
    "GITROOT_CMDLINE stands in for /proc/cmdline and GITROOT_RUN_DIR for" \
    "/run/gitroot, where the boot path records what it booted."
cat >device/gitroot.yml <<EOF
remotes: ["$git_url"]
branch: stable
repository: $W/device/repo.git
state_dir: $W/device/state
boot_dir: $W/device/boot
trusted_keys:
  allowed_signers: $W/device/allowed_signers
signature_policy: strict
tries: 2
EOF
mkdir -p device/boot device/mnt
export GITROOT_CONFIG=$W/device/gitroot.yml
export GITROOT_CMDLINE="root=/dev/vda ro quiet"
export GITROOT_RUN_DIR=$W/device/run
run cat device/gitroot.yml
run gitroot fetch
run gitroot boot-select
run gitroot mark-good
run gitroot status

# -----------------------------------------------------------------------------
chapter "Release 2: commit, sign, publish"
say "A new kernel (so a new /boot/vmlinuz and initrd), a changed" \
    "/etc/os-release and a NEWS file. The git server has it as soon as it" \
    "is committed; the static directory gets an upgrade bundle 1 -> 2."
publish_release 2
R2=$(cat release-2.id)
run gitroot bundle --repo srv/git/os.git --from "$R1" --to stable --publish srv/www/releases/
run cat srv/www/releases/index.json

# -----------------------------------------------------------------------------
chapter "The device fetches release 2 from the static directory"
say "It downloads the cheapest chain of bundles from a release it has," \
    "checks sizes and SHA-256, lets git check every object, verifies the" \
    "signature, installs the kernel and initrd, and pins release 2 as a" \
    "trial: the next boot tries it, at most 2 times."
run gitroot fetch --from "$static_url"
run gitroot status
run gitroot diff --stat
run ls -l device/boot/gitroot

# -----------------------------------------------------------------------------
chapter "Mount the trial and compare it with its source, entry by entry"
run gitroot mount --repo device/repo.git "$R2" device/mnt
run ls -l device/mnt/bin device/mnt/boot
run sample_tree compare publisher/rootfs-2 device/mnt
run fusermount -u device/mnt

# -----------------------------------------------------------------------------
chapter "Boot the trial and mark it good"
say "boot-select is what the initramfs runs: it picks the trial and uses" \
    "up one of its tries. Once the system is up, mark-good makes it the" \
    "last good release (release 1 stays as the previous good one)."
run gitroot boot-select
run gitroot mark-good
run gitroot status

# -----------------------------------------------------------------------------
chapter "Release 3, tampered with on the server, is refused"
say "The publisher signs release 3; someone with access to the server" \
    "then swaps its tree for another one (an extra file in /etc), keeping" \
    "the commit's signature, and points the branch at the forgery."
publish_release 3
R3=$(cat release-3.id)
echo "root::0:0:root:/root:/bin/sh" >publisher/rootfs-3/etc/backdoor
evil_tree=$(git --git-dir srv/git/os.git rev-parse \
    "$(gitroot commit publisher/rootfs-3 --repo srv/git/os.git --branch evil -m x 2>/dev/null)^{tree}")
forged=$(git --git-dir srv/git/os.git cat-file commit "$R3" \
    | sed "1s/^tree .*/tree $evil_tree/" \
    | git --git-dir srv/git/os.git hash-object -t commit -w --stdin)
git --git-dir srv/git/os.git update-ref refs/heads/stable "$forged"
git --git-dir srv/git/os.git update-ref -d refs/heads/evil
echo "$forged" >release-3-forged.id
run git -c gpg.ssh.allowedSignersFile=device/allowed_signers --git-dir srv/git/os.git log --format="%h %s (signature: %G? %GS)" -1 stable
refused gitroot fetch
run gitroot status

# -----------------------------------------------------------------------------
chapter "Roll back to release 1"
say "The operator wants release 1 back: rollback schedules the previous" \
    "good release for the next boot and holds upgrades until" \
    "'gitroot pin --release'."
run gitroot rollback
run gitroot boot-select
run gitroot mark-good
run gitroot status
run gitroot log

printf '\n== done: the device runs release 1 (%s) again; everything is in %s\n' \
    "${R1:0:12}" "$W"
