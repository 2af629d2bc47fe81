"""gitroot install-image ROOT: put gitroot into an image's root tree."""

import argparse

from gitroot.publish.image import ImageSettings, install_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT", help="the image's root filesystem tree")
    parser.add_argument("--bootloader", choices=("none", "grub", "systemd-boot"),
                        default="none", help="the boot loader that starts release kernels "
                        "(written into the default configuration)")
    parser.add_argument("--cmdline", default=ImageSettings.cmdline,
                        help="the kernel command line of the boot loader's entries")
    parser.add_argument("--boot-dir", help="where the boot loader reads kernels (default: "
                        "the medium's /boot for grub, /boot/efi for systemd-boot)")
    parser.add_argument("--esp-device", default=ImageSettings.esp_device,
                        help="systemd-boot: the EFI system partition, mounted at the boot "
                        "directory (default: %(default)s)")
    parser.add_argument("--esp", dest="esp_dir", metavar="DIR",
                        help="systemd-boot: lay out the ESP's own files (the image's "
                        "systemd-boot, loader.conf) in DIR")
    parser.add_argument("--remote", action="append", default=[], dest="remotes",
                        help="where releases come from (repeatable)")
    parser.add_argument("--update-initramfs", action="store_true",
                        help="run update-initramfs in ROOT (a chroot) afterwards")
    parser.add_argument("--no-package-check", action="store_true",
                        help="do not require gitroot's runtime packages in ROOT")


def run(args: argparse.Namespace) -> int:
    done = install_image(ImageSettings(
        root=args.root, bootloader=args.bootloader, cmdline=args.cmdline,
        boot_dir=args.boot_dir, remotes=tuple(args.remotes),
        esp_device=args.esp_device, esp_dir=args.esp_dir,
        update_initramfs=args.update_initramfs, check_packages=not args.no_package_check))
    for line in done:
        print(line)
    return 0
