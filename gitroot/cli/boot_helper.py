"""gitroot boot-helper: the initramfs's one Python process.

The boot script (initramfs/gitroot) starts python3 once, as this verb with
its standard input and output on two FIFOs, and sends it its requests
instead of starting python3 for each step: a Python start is seconds under
emulation and was most of the initramfs phase (docs/performance.md).

A request is its words one a line, ended by an empty line (the boot script
sends no empty word and none holding a newline):

``params``
    the medium and the boot loader's commit as gitroot's own parser reads
    the kernel command line: ``gitroot.root``, ``gitroot.rootfstype``,
    ``gitroot.rootflags``, ``gitroot.repo``, ``gitroot.commit``, one a line
    (empty when absent); a malformed command line is one line on stderr and
    status 1.
``setenv NAME VALUE``
    set a ``GITROOT_*`` variable for the later requests (the boot script
    drops ``update-revision=`` through ``GITROOT_CMDLINE``).
``boot-select ...``, ``mount ...``, ``boot-persist ...``
    that verb, run in this process exactly as ``gitroot VERB ...`` runs
    it: the same arguments, output, messages and exit status.

The answer is what the request printed on standard output, then the line
``gitroot-helper-exit N`` with its exit status; messages go to standard
error (the console) as the verb's own would.  End of input ends the helper.

Once it has answered its first request (the command line, which the boot
script needs to find the medium), the helper imports what the later verbs
need (pygit2, the FUSE bindings) while the boot script waits for the
medium and checks its filesystem.

Single-threaded.  ``mount`` forks the FUSE daemon from this process; the
daemon puts /dev/null on its standard input and output, so it keeps
neither FIFO open.  Imports only what the boot verbs import
(tests/unit/test_boot_imports.py).
"""

import argparse
import importlib
import os
import sys
from typing import BinaryIO, List, Optional

#: the verbs a request may name (each is on the initramfs's import path)
BOOT_VERBS = ("boot-select", "mount", "boot-persist")
#: what the later requests import, loaded ahead of them (see preload)
PRELOAD = ("gitroot.cli.boot_select", "gitroot.cli.boot_persist", "gitroot.cli.mount",
           "gitroot.git.repository", "gitroot.serve.daemon", "gitroot.serve.export")
EXIT_LINE = "gitroot-helper-exit"
#: a request longer than this is not the boot script's
MAX_REQUEST_WORDS = 64
MAX_WORD_BYTES = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments: the requests say everything."""


def run(args: argparse.Namespace) -> int:
    serve(sys.stdin.buffer, sys.stdout)
    return 0


def serve(requests: BinaryIO, answers) -> None:
    """Answer *requests* until their end; *answers* is a text stream."""
    preloaded = False
    while True:
        words = read_request(requests)
        if words is None:
            return
        status = answer(words, answers)
        answers.write(f"{EXIT_LINE} {status}\n")
        answers.flush()
        if not preloaded:
            preload()
            preloaded = True


def read_request(requests: BinaryIO) -> Optional[List[str]]:
    """The next request's words; None at the end of input.  An oversized
    request is returned as a single empty word (refused by answer())."""
    words: List[str] = []
    oversized = False
    while True:
        line = requests.readline(MAX_WORD_BYTES + 1)
        if not line:
            return None if not words and not oversized else ([""] if oversized else words)
        if line == b"\n":
            return [""] if oversized else words
        if len(line) > MAX_WORD_BYTES or len(words) >= MAX_REQUEST_WORDS:
            oversized = True
            continue
        words.append(line.rstrip(b"\n").decode("utf-8", "surrogateescape"))


def answer(words: List[str], answers) -> int:
    """Carry out one request; its output goes to *answers*, its status is returned."""
    verb = words[0] if words else ""
    if verb == "params":
        return _params(answers)
    if verb == "setenv":
        if len(words) != 3 or not words[1].startswith("GITROOT_"):
            print("gitroot: boot-helper: setenv takes GITROOT_NAME VALUE", file=sys.stderr)
            return 2
        os.environ[words[1]] = words[2]
        return 0
    if verb not in BOOT_VERBS:
        print(f"gitroot: boot-helper: not a boot request: {verb[:40]!r}", file=sys.stderr)
        return 2
    from gitroot.cli import main
    stdout = sys.stdout
    sys.stdout = answers
    try:
        return main(words)
    except SystemExit as done:             # argparse's usage errors
        return 0 if done.code is None else done.code if isinstance(done.code, int) else 2
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


def _params(answers) -> int:
    from gitroot.boot.cmdline import read_cmdline
    from gitroot.errors import GitrootError
    try:
        params = read_cmdline()
    except GitrootError as err:
        print(f"gitroot: {err}", file=sys.stderr)
        return 1
    for value in (params.root, params.rootfstype, params.rootflags, params.repo,
                  params.commit):
        answers.write(f"{value or ''}\n")
    return 0


def preload() -> None:
    """Import what boot-select, mount and boot-persist will need; a module
    that cannot be imported is left for its request to report."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:   # noqa: B902 - reported by the request that needs it
            pass
