"""The launcher's agent on the remote host: ``python -m fastenv.launch.remote run ...``.

:func:`fastenv.launch.launch` runs this over SSH, after the user's setup
command and in the user's directory. The agent:

1. with ``--cleanup-old``, stops the servers earlier launches recorded in the
   state directory (see :mod:`fastenv.launch.pidfiles`);
2. starts ``python -m fastenv serve ...`` with the same interpreter, in a new
   session (so the server leads its own process group), its stdout and stderr
   going to ``<state dir>/<id>.log`` and forwarded to the launcher;
3. writes ``<state dir>/<id>.json`` and prints events
   (:mod:`fastenv.launch.events`): ``started``, then ``ready`` once the server
   prints its ready line, ``exited`` once its process group is gone;
4. ends the server's whole process group (SIGTERM, then SIGKILL after the
   grace period) when the launcher writes ``stop [GRACE]`` on stdin, when stdin
   closes (the SSH connection is gone: the launcher exited or died, or the
   network dropped), on SIGTERM / SIGHUP / SIGINT, or when the server exits by
   itself (to reap what it left in its group). Then it exits.

Not a public API: the launcher and the agent come from the same fastenv.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from fastenv.launch.events import CLEANED, EXITED, FAILED, READY, STARTED, format_event
from fastenv.launch.pidfiles import cleanup_old, make_record, prepare_state_dir, write_record
from fastenv.launch.procgroup import KILL_WAIT, end_group

DEFAULT_GRACE = 10.0
READY_PREFIX = "fastenv: ready "
_DATA_PORT = re.compile(r"^fastenv: serving .* data stream on port (\d+)\s*$")
_EVENT_PUT_TIMEOUT = 10.0


class _Output:
    """Our stdout (the SSH channel), written by one thread so the server never blocks on it.

    Plain output lines are dropped when the launcher does not keep up (they
    are all in the log file); events are never dropped. Writes go to the file
    descriptor itself: a daemon thread blocked inside ``sys.stdout`` would hold
    its lock when the interpreter shuts down.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=4096)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="fastenv-launch-output", daemon=True)
        self._thread.start()

    def line(self, text: str) -> None:
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            self.dropped += 1

    def event(self, kind: str, **fields: Any) -> None:
        try:
            self._queue.put(format_event(kind, **fields), timeout=_EVENT_PUT_TIMEOUT)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        broken = False
        while (item := self._queue.get()) is not None:
            if broken:
                continue
            data = memoryview(item.encode("utf-8", "replace") + b"\n")
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:  # the launcher is gone: keep draining, write nothing
                broken = True

    def close(self, timeout: float) -> None:
        """Flush what is queued (up to ``timeout`` seconds) and stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


class _StopRequest:
    """Set by whatever asks the agent to end the server: stdin, a signal, or the server's own exit."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.requested = False  # by the launcher or a signal, as opposed to the server exiting
        self.wake = threading.Event()
        self._lock = threading.Lock()

    def request(self, grace: float | None = None) -> None:
        with self._lock:
            if grace is not None and grace >= 0:
                self.grace = grace
            self.requested = True
        self.wake.set()


def _watch_stdin(fd: int, stop: _StopRequest) -> None:
    """``stop [GRACE]`` or EOF (the SSH channel closed) ends the server.

    Reads the file descriptor itself, not ``sys.stdin``: this daemon thread is
    still blocked in the read when the interpreter shuts down.
    """
    pending = b""
    try:
        while data := os.read(fd, 4096):
            *lines, pending = (pending + data).split(b"\n")
            for raw in lines:
                words = raw.decode("utf-8", "replace").split()
                if words and words[0] == "stop":
                    try:
                        stop.request(float(words[1]) if len(words) > 1 else None)
                    except ValueError:
                        stop.request()
                    return
    except OSError:
        pass
    stop.request()


def _pump(stream: IO[bytes], log: IO[bytes], out: _Output, on_line: Callable[[str], None]) -> None:
    """Server output -> log file and launcher, line by line."""
    try:
        for raw in iter(stream.readline, b""):
            try:
                log.write(raw)
                log.flush()
            except OSError:
                pass
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            out.line(text)
            on_line(text)
    except (OSError, ValueError):  # the pipe was closed under us at exit
        pass


def _ready_watcher(out: _Output) -> Callable[[str], None]:
    """Turn the server's ``serving ... data stream on port N`` and ready lines into one ``ready`` event."""
    seen: dict[str, Any] = {"data_port": 0, "ready": False}

    def on_line(text: str) -> None:
        match = _DATA_PORT.match(text)
        if match:
            seen["data_port"] = int(match.group(1))
        elif not seen["ready"] and text.startswith(READY_PREFIX):
            seen["ready"] = True
            address = text[len(READY_PREFIX) :].strip()
            host, _, port = address.removeprefix("tcp://").rpartition(":")
            out.event(READY, address=address, host=host.strip("[]"), port=int(port), data_port=seen["data_port"])

    return on_line


def _ssh_interface() -> str | None:
    """The address of this host that the SSH client connected to (from ``$SSH_CONNECTION``)."""
    fields = os.environ.get("SSH_CONNECTION", "").split()
    return fields[2] if len(fields) == 4 else None


def _wait_exit_keep_zombie(proc: subprocess.Popen[bytes], exited: threading.Event, stop: _StopRequest) -> None:
    """Wait for the server to exit *without reaping it*, then wake the main thread.

    While the exited leader stays a zombie its pid (= the group id) cannot be
    given to another process, so signalling the group afterwards is safe. It is
    reaped by ``proc.wait()`` once the group is gone.
    """
    if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
        while True:
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                break
            except ChildProcessError:  # already reaped
                break
            except InterruptedError:
                continue
    else:
        proc.wait()
    exited.set()
    stop.wake.set()


def _serve(state_dir: Path, launch_id: str, serve_args: list[str], grace: float, out: _Output) -> int:
    log_path = state_dir / f"{launch_id}.log"
    pid_path = state_dir / f"{launch_id}.json"
    command = [sys.executable, "-m", "fastenv", "serve", *serve_args]
    stop = _StopRequest(grace)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.request())
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(log_fd, "ab") as log:
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            out.event(FAILED, message=f"cannot run {command[0]}: {exc}")
            return 126
        exited = threading.Event()
        with proc:
            try:
                threading.Thread(
                    target=_wait_exit_keep_zombie, args=(proc, exited, stop), name="fastenv-launch-reaper", daemon=True
                ).start()
                assert proc.stdout is not None
                pump = threading.Thread(
                    target=_pump,
                    args=(proc.stdout, log, out, _ready_watcher(out)),
                    name="fastenv-launch-pump",
                    daemon=True,
                )
                pump.start()
                write_record(pid_path, make_record(launch_id, proc.pid, command, log_path))
                out.event(STARTED, pid=proc.pid, pgid=proc.pid, log=str(log_path), pidfile=str(pid_path))
                threading.Thread(
                    target=_watch_stdin, args=(sys.stdin.fileno(), stop), name="fastenv-launch-stdin", daemon=True
                ).start()
                stop.wake.wait()
            finally:  # whatever happened here, the server's group does not outlive the agent
                end_group(proc.pid, stop.grace, leader_exited=exited)
                with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable (uninterruptible sleep)
                    proc.wait(KILL_WAIT)
                if proc.returncode is not None:  # else keep the record: cleanup_old may end it later
                    pid_path.unlink(missing_ok=True)
            pump.join(timeout=stop.grace)
            out.event(EXITED, code=proc.returncode, stopped=stop.requested)
    if stop.requested:
        return 0
    code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    return code if code > 0 else 128 - code


def _run(args: argparse.Namespace) -> int:
    sys.stdout.flush()
    out = _Output(sys.stdout.fileno())
    try:
        state_dir = prepare_state_dir(args.state_dir)
        if args.cleanup_old:
            stopped, stale = cleanup_old(state_dir, args.grace)
            out.event(CLEANED, stopped=stopped, stale=stale)
        serve_args = list(args.serve_args)
        if serve_args[:1] == ["--"]:
            serve_args = serve_args[1:]
        if args.bind_ssh_interface:
            interface = _ssh_interface()
            if interface is None:
                out.event(FAILED, message="$SSH_CONNECTION is not set: cannot tell which interface to bind")
                return 2
            serve_args += ["--bind", interface]
        return _serve(state_dir, args.id, serve_args, args.grace, out)
    finally:
        out.close(timeout=_EVENT_PUT_TIMEOUT)


def _cleanup(args: argparse.Namespace) -> int:
    stopped, stale = cleanup_old(prepare_state_dir(args.state_dir), args.grace)
    print(format_event(CLEANED, stopped=stopped, stale=stale), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fastenv.launch.remote``."""
    parser = argparse.ArgumentParser(prog="python -m fastenv.launch.remote", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start `fastenv serve` and look after it")
    run.add_argument("--id", required=True, help="name of the pid and log files")
    run.add_argument("--cleanup-old", action="store_true", help="first stop the servers recorded in the state dir")
    run.add_argument("--bind-ssh-interface", action="store_true", help="bind the interface the SSH client reached")
    run.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- TARGET and `fastenv serve` options")
    run.set_defaults(handler=_run)
    cleanup = commands.add_parser("cleanup", help="stop the servers recorded in the state directory")
    cleanup.set_defaults(handler=_cleanup)
    for sub in (run, cleanup):
        sub.add_argument("--state-dir", default=None, help="default: $XDG_CACHE_HOME/fastenv/launch")
        sub.add_argument("--grace", type=float, default=DEFAULT_GRACE, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
