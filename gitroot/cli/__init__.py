"""Command-line entry point: a table of verbs, each in its own module.

Each verb module defines ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their verb runs, so ``gitroot mount`` and
``gitroot boot-select`` (which the initramfs runs) never import signing,
HTTP, configuration or fetcher code.

``main()`` is the only place that prints an error and picks an exit status:
a :class:`gitroot.errors.GitrootError` becomes one line on stderr and its
``exit_code``; a traceback is shown only with ``--debug``.
"""

import argparse
import importlib
import logging
import sys
from typing import List, Optional

# verb -> (module, one-line help).  Keep sorted by life-cycle, not alphabet.
VERBS = {
    "install-image": ("gitroot.cli.install_image", "put gitroot into an image's root tree"),
    "commit": ("gitroot.cli.commit", "import a root filesystem tree as a commit"),
    "mount": ("gitroot.cli.mount", "serve a commit read-only through FUSE"),
    "fetch": ("gitroot.cli.fetch", "fetch, check and pin the next release"),
    "status": ("gitroot.cli.status", "where this device stands"),
    "log": ("gitroot.cli.log", "history of pins"),
    "diff": ("gitroot.cli.diff", "what an update changes"),
    "pin": ("gitroot.cli.pin", "choose the next boot's release by hand"),
    "rollback": ("gitroot.cli.rollback", "back to the previous good release"),
    "mark-good": ("gitroot.cli.mark_good", "the booted trial becomes the last good release"),
    "etc": ("gitroot.cli.etc", "the device's /etc against the release's: diff, conflicts, resolve"),
    "migrate": ("gitroot.cli.migrate", "run the booted release's data migrations"),
    "migrations": ("gitroot.cli.migrations", "applied and pending data migrations"),
    "factory-reset": ("gitroot.cli.factory_reset",
                      "drop the device's /etc changes and persistent data at the next boot"),
    "gc": ("gitroot.cli.gc", "prune old releases"),
    "boot-entries": ("gitroot.cli.boot_entries",
                     "install kernels and write the boot loader's entries"),
    "boot-select": ("gitroot.cli.boot_select", "choose what this boot mounts (initramfs)"),
    "boot-persist": ("gitroot.cli.boot_persist",
                     "merge /etc, mount the device's persistent data (initramfs)"),
    "uncompress-initrd": ("gitroot.cli.uncompress_initrd",
                          "rewrite an initrd uncompressed (initramfs-tools' post-update hook)"),
    "bundle": ("gitroot.cli.bundle", "write a compressed bundle for a static HTTP directory"),
    "tag": ("gitroot.cli.tag", "make a signed annotated tag of a commit"),
    "verify": ("gitroot.cli.verify", "check the signature on a tag or commit"),
}


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    """The parser, with arguments only for the verb named in *argv*.

    Only that verb's module is imported, so an unused verb's imports never
    run (the initramfs runs ``boot-select`` and ``mount``).
    """
    parser = argparse.ArgumentParser(
        prog="gitroot",
        description="Ship and boot an operating system root filesystem from git.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module_name, summary) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=summary, description=summary)
        if verb == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(verb_parser)
            verb_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one verb; the only place that turns an exception into an exit code.

    A :class:`GitrootError` is its one-line message and its own exit code.
    Anything else (a defect, or an input no check foresaw) is still one
    line and exit code 70, never a traceback unless ``--debug`` asks.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="gitroot: %(message)s",
        stream=sys.stderr,
    )
    from gitroot.errors import GitrootError, InternalError

    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("gitroot: interrupted", file=sys.stderr)
        return 130
    except GitrootError as err:
        if args.debug:
            raise
        print(f"gitroot: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # the one edge: see the docstring
        if args.debug:
            raise
        print(f"gitroot: error: {_describe_unexpected(err)}", file=sys.stderr)
        return InternalError.exit_code


def _describe_unexpected(err: Exception) -> str:
    """One line for an exception gitroot did not word itself."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    if isinstance(err, RecursionError):
        return "input nested too deeply"
    text = " ".join(str(err).split())[:300]
    return f"internal error ({type(err).__name__}{': ' + text if text else ''}); " \
        "run with --debug for details"


if __name__ == "__main__":
    sys.exit(main())
