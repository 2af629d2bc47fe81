"""The one error edge: exit codes are one table, documented, and every
exception ends as one line (no traceback) from cli.main()."""

import os
import re

import pytest

from gitroot import errors
from gitroot.cli import main
from tests.conftest import REPO_ROOT


def _error_classes():
    pending, found = [errors.GitrootError], []
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_class_has_a_documented_code():
    codes = {cls.exit_code for cls in _error_classes()}
    assert codes <= set(errors.EXIT_CODES), codes - set(errors.EXIT_CODES)


def test_operations_doc_lists_exactly_the_table():
    with open(os.path.join(REPO_ROOT, "docs", "operations.md")) as f:
        text = f.read()
    section = text.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M))
    assert {int(k): v for k, v in rows.items()} == errors.EXIT_CODES


@pytest.mark.parametrize("exc, code, words", [
    (errors.FetchError("the server went away"), 9, "the server went away"),
    (errors.StateError("bad state"), 8, "bad state"),
    (RecursionError("maximum recursion depth exceeded"), 70, "nested too deeply"),
    (TypeError("unsupported operand"), 70, "internal error (TypeError: unsupported operand)"),
    (FileNotFoundError(2, "No such file or directory", "/nonexistent/index.json"), 70,
     "/nonexistent/index.json: No such file or directory"),
])
def test_main_turns_every_exception_into_one_line(monkeypatch, capsys, exc, code, words):
    import gitroot.cli.log as verb

    def boom(args):
        raise exc
    monkeypatch.setattr(verb, "run", boom)
    assert main(["log"]) == code
    err = capsys.readouterr().err
    assert words in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(monkeypatch):
    import gitroot.cli.log as verb

    def boom(args):
        raise TypeError("defect")
    monkeypatch.setattr(verb, "run", boom)
    with pytest.raises(TypeError):
        main(["--debug", "log"])
