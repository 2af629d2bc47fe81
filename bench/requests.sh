#!/bin/sh
# Count the FUSE requests the kernel sends a gitroot mount for each phase of
# a workload, from libfuse's own debug log (docs/performance.md, "The
# low-level back end").  As root, from the repository's top directory:
#
#   bench/requests.sh BACKEND REPO REV [PYTHON]
#
# BACKEND is a name GITROOT_FUSE takes (lowlevel, libfuse3, libfuse2).
# Phases, on one mount made after dropping the page cache: a metadata walk
# (find) cold and warm, a full read (tar) first and warm, a python3 start
# (chroot) and a warm one.
set -eu

if [ $# -lt 3 ]; then
	echo "usage: $0 BACKEND REPO REV [PYTHON]" >&2
	exit 2
fi
backend=$1
repo=$2
rev=$3
python=${4:-.venv/bin/python}
work=$(mktemp -d /var/tmp/gitroot-requests.XXXXXX)
mnt=${work}/mnt
log=${work}/debug.log
mkdir "${mnt}"

sync
echo 3 >/proc/sys/vm/drop_caches
GITROOT_FUSE=${backend} "${python}" -m gitroot --debug mount --foreground \
	--repo "${repo}" "${rev}" "${mnt}" >"${log}" 2>&1 &
daemon=$!
i=0
until mountpoint -q "${mnt}"; do
	i=$((i + 1))
	if [ "${i}" -gt 300 ] || ! kill -0 "${daemon}" 2>/dev/null; then
		echo "E: the mount did not come up; its log:" >&2
		cat "${log}" >&2
		exit 1
	fi
	sleep 0.1
done
sleep 0.5

phase() {
	before=$(wc -l <"${log}")
	sh -c "$2" >/dev/null 2>&1 || true
	sleep 0.5
	printf '%s %-11s ' "${backend}" "$1"
	tail -n +"$((before + 1))" "${log}" | grep -oE 'opcode: [A-Z_]+' | sort | uniq -c |
		awk '{ printf "%s=%s ", $3, $1 } END { print "" }'
}

start="chroot ${mnt} python3 -c 'import json, email.parser, http.client, asyncio'"
phase walk-cold "find ${mnt}"
phase walk-warm "find ${mnt}"
# through cat: GNU tar reads no file it would write to /dev/null
phase read-1st "tar -C ${mnt} -cf - . | cat"
phase read-warm "tar -C ${mnt} -cf - . | cat"
phase start "${start}"
phase start-warm "${start}"

fusermount -u "${mnt}"
wait "${daemon}" || true
rm -rf "${work}"
