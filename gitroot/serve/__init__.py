"""Serving one commit read-only: the view (a commit as a filesystem, no
FUSE), the FUSE adapter over it, and the daemon that mounts it (and jails
itself on the boot path).

Runs in the initramfs: imports only ``gitroot.git``, ``gitroot.errors`` and
the FUSE binding.
"""
