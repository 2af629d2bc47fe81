"""gitroot uncompress-initrd FILE: keep an initrd uncompressed in the image.

Run by initramfs-tools after every initrd it makes in an image built with
``gitroot install-image`` (``/etc/initramfs/post-update.d/gitroot``), so the
release's /boot holds the cpio archive itself and an initrd that differs
little from the last release's travels as a small delta.  gitroot
compresses it again when it installs it for the boot loader
(:mod:`gitroot.device.initrd`, docs/boot.md).
"""

import argparse

from gitroot.device.initrd import uncompress_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("initrd", metavar="FILE", help="the initrd to rewrite uncompressed")


def run(args: argparse.Namespace) -> int:
    print(uncompress_file(args.initrd))
    return 0
