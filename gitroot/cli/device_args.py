"""The command-line options every device verb shares, and who runs a verb
(no imports: the boot path's ``boot-select`` uses them too)."""

import os


def who() -> str:
    """The operator, for the history log."""
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or f"uid {os.getuid()}"


def add_device_arguments(parser) -> None:
    parser.add_argument("--config", help="configuration file (default: $GITROOT_CONFIG "
                        "or /etc/gitroot/gitroot.yml)")
    parser.add_argument("--repo", dest="repository", help="the device's bare repository "
                        "(default: from the configuration)")
    parser.add_argument("--state-dir", help="state directory (default: from the configuration)")
