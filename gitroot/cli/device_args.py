"""The command-line options every device verb shares (no imports: the boot
path's ``boot-select`` uses them too)."""


def add_device_arguments(parser) -> None:
    parser.add_argument("--config", help="configuration file (default: $GITROOT_CONFIG "
                        "or /etc/gitroot/gitroot.yml)")
    parser.add_argument("--repo", dest="repository", help="the device's bare repository "
                        "(default: from the configuration)")
    parser.add_argument("--state-dir", help="state directory (default: from the configuration)")
