"""Running the ``git`` program, and saying in one line why it failed.

Some jobs are git's own (fetch with its transports, bundles, pack-objects,
merge-base across a shallow boundary, gc); they go through :func:`run_git`
so that the environment (no prompts, C locale) and the error wording are
the same everywhere.  A missing ``git`` is a :class:`MissingToolError`,
never a traceback.
"""

import os
import signal
import subprocess
from typing import Optional, Union

from gitroot.errors import MissingToolError


def run_git(repo_path: Optional[str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    """``git --git-dir REPO ARGS`` with stdout and stderr captured (unless the
    caller says otherwise) and stdin closed.  ``own_group=True``: see
    :func:`_run_group` (for transfers run under a deadline)."""
    env = dict(os.environ, LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true")
    env.update(kwargs.pop("env", None) or {})
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    cmd = ["git"] + (["--git-dir", repo_path] if repo_path else []) + list(args)
    own_group = kwargs.pop("own_group", False)
    try:
        if own_group:
            return _run_group(cmd, env, **kwargs)
        return subprocess.run(cmd, env=env, **kwargs)
    except FileNotFoundError:
        raise MissingToolError("the git program is not installed (apt-get install git)") \
            from None


def _run_group(cmd, env, input=None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` with git in a process group of its own, killed whole
    when the caller is interrupted (a deadline, SIGTERM, Ctrl-C).  ``git
    fetch`` over HTTP runs ``git-remote-http`` as its child, which would
    otherwise outlive a killed git and hold a stalled connection open."""
    with subprocess.Popen(cmd, env=env, start_new_session=True, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input)
        except BaseException:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            raise
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def failure_summary(stderr: Union[bytes, str, None], returncode: int) -> str:
    """The lines of git's stderr that say what went wrong.

    git often ends with a generic 'fatal: index-pack failed'; the cause, such
    as 'No space left on device', comes before it, so the last three
    error/fatal lines are kept, each once.
    """
    text = stderr or b""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    wanted = [line for line in lines if line.startswith(("error:", "fatal:"))] or lines
    return "; ".join(dict.fromkeys(wanted[-3:])) or f"git exited {returncode}"
