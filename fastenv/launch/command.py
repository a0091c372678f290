"""The shell command the launcher runs on the remote host.

It runs in the user's login shell (as ``ssh host "command"`` does), which must
be POSIX-like (sh, bash, zsh, ...)::

    export NAME='value'                       # env=
    cd '/work/dir' || exit 97                 # cwd=
    { source venv/bin/activate
    } || { ...report...; exit $rc; }          # setup=
    exec python -m fastenv.launch.remote run --id ID ... -- TARGET --port 0 --data-port 0 --bind 127.0.0.1 ...

Everything but ``setup`` is quoted; ``setup`` is the user's own shell code.
A leading ``~/`` in ``python``, ``cwd`` stays expandable.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

CWD_FAILED = 97  # exit status when ``cd`` fails
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def shell_path(path: str) -> str:
    """Quote ``path`` for a POSIX shell, keeping a leading ``~`` / ``~/`` expandable."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def serve_arguments(
    target: str,
    *,
    port: int,
    data_port: int,
    bind: str | None,
    env_kwargs: Mapping[str, Any] | None,
    insecure: bool,
    extra_args: Sequence[str],
) -> list[str]:
    """The ``fastenv serve`` command line after ``serve``."""
    args = [target, "--port", str(port), "--data-port", str(data_port)]
    if bind is not None:
        args += ["--bind", bind]
    if env_kwargs:
        args += ["--env-kwargs", json.dumps(dict(env_kwargs))]
    if insecure:
        args.append("--insecure")
    return args + [str(arg) for arg in extra_args]


def remote_command(
    *,
    python: str,
    launch_id: str,
    serve_args: Sequence[str],
    grace: float,
    setup: str | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    state_dir: str | None = None,
    cleanup_old: bool = False,
    bind_ssh_interface: bool = False,
) -> str:
    """The whole script (newline-separated) for the remote login shell."""
    lines = []
    for name, value in (env or {}).items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        lines.append(f"export {name}={shlex.quote(str(value))}")
    if cwd:
        lines.append(f"cd {shell_path(cwd)} || exit {CWD_FAILED}")
    if setup:
        lines.append(
            "{\n" + setup + "\n} || { fastenv_rc=$?; "
            'echo "fastenv launch: the setup command failed (exit status $fastenv_rc)" >&2; exit $fastenv_rc; }'
        )
    agent = ["-m", "fastenv.launch.remote", "run", "--id", launch_id, "--grace", f"{grace:g}"]
    if state_dir:
        agent += ["--state-dir", state_dir]
    if cleanup_old:
        agent.append("--cleanup-old")
    if bind_ssh_interface:
        agent.append("--bind-ssh-interface")
    agent += ["--", *serve_args]
    lines.append("exec " + shell_path(python) + " " + " ".join(shlex.quote(arg) for arg in agent))
    return "\n".join(lines)
