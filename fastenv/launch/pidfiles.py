"""The records of launched servers on the remote host, and ``cleanup_old``.

Each server the launch agent starts gets ``<state dir>/<id>.json`` (removed
when its process group is gone) and ``<state dir>/<id>.log``. The state
directory is ``$XDG_CACHE_HOME/fastenv/launch`` (``~/.cache/fastenv/launch``)
unless one is given. A record names the server's pid, its start time and its
command line: a record is acted on only if a live process matches all three,
so a pid the kernel has since given to another process is never signalled.
Process names are never pattern-matched.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil

from fastenv.launch.procgroup import end_group, wait_exited

LOG_RETENTION_S = 7 * 24 * 3600  # logs of servers that are gone are removed after a week
_START_TIME_TOLERANCE_S = 0.05


def default_state_dir() -> Path:
    """``$XDG_CACHE_HOME/fastenv/launch`` or ``~/.cache/fastenv/launch``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastenv" / "launch"


def prepare_state_dir(path: str | os.PathLike[str] | None) -> Path:
    """Create the state directory (mode 0700) and drop week-old logs of finished servers."""
    state_dir = Path(path).expanduser() if path else default_state_dir()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = time.time()
    for log in state_dir.glob("*.log"):
        try:
            if not log.with_suffix(".json").exists() and now - log.stat().st_mtime > LOG_RETENTION_S:
                log.unlink()
        except OSError:
            continue
    return state_dir


def make_record(launch_id: str, pid: int, command: list[str], log_path: Path) -> dict[str, Any]:
    """What identifies a started server for later: pid, start time, command line."""
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error:
        create_time = 0.0
    return {
        "id": launch_id,
        "pid": pid,
        "pgid": pid,
        "create_time": create_time,
        "cmdline": command,
        "agent_pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log": str(log_path),
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically, readable by its owner only."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    os.replace(temporary, path)


def verified_process(record: dict[str, Any]) -> psutil.Process | None:
    """The live process a record describes, or None when the pid is gone or now belongs to another process."""
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > _START_TIME_TOLERANCE_S:
            return None
        if proc.cmdline() != list(record["cmdline"]) or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def cleanup_old(state_dir: Path, grace: float) -> tuple[list[int], list[str]]:
    """Stop every server recorded in ``state_dir``; return (pids stopped, stale records removed)."""
    stopped: list[int] = []
    stale: list[str] = []
    for path in sorted(state_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        proc = verified_process(record) if isinstance(record, dict) else None
        if proc is None:
            stale.append(path.name)
        else:
            try:
                same_group = os.getpgid(proc.pid) == proc.pid
            except OSError:
                same_group = False
            if same_group:
                end_group(proc.pid, grace)
            else:  # it left its group (unusual): end the process alone
                proc.terminate()
                if wait_exited([proc], grace):
                    proc.kill()
            stopped.append(proc.pid)
        path.unlink(missing_ok=True)
    return stopped, stale
