"""Run ``fastenv serve`` as a child process and wait for its ready line.

Used by the demo, the benchmarks and the tests: the server is the real CLI in
a real process, and readiness is the ``fastenv: ready <address>`` line it
prints, never a fixed sleep.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

from fastenv.errors import FastEnvError, FastEnvTimeout

READY_PREFIX = "fastenv: ready "
READY_LINE = READY_PREFIX + "{address}"  # what `fastenv serve` and `fastenv launch` print once ready


class ServerStartError(FastEnvError):
    """The server process exited (or printed garbage) before becoming ready."""


class ServerProcess:
    """A ``fastenv serve TARGET`` child process.

    Example::

        with ServerProcess("fastenv.examples:VectorEnv") as server:
            env = fastenv.FastRemoteEnv(server.address)

    Args:
        target: what ``fastenv serve`` should serve.
        args: extra command-line arguments (``["--mode", "per-client"]``).
        env_kwargs: passed as ``--env-kwargs`` JSON.
        ready_timeout: seconds to wait for the ready line.
        extra_env: environment variables added for the child.
        command: run this command line instead of ``fastenv serve`` (it must print
            the same ready line).
    """

    def __init__(
        self,
        target: str,
        args: Sequence[str] = (),
        *,
        env_kwargs: dict[str, Any] | None = None,
        ready_timeout: float = 30.0,
        extra_env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.command = [sys.executable, "-m", "fastenv", "serve", target, "--port", "0", *args]
        if command is not None:
            self.command = list(command)
        elif env_kwargs:
            self.command += ["--env-kwargs", json.dumps(env_kwargs)]
        self.ready_timeout = ready_timeout
        self.extra_env = dict(extra_env or {})
        self.address: str = ""
        self.process: subprocess.Popen[str] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._drainers: list[threading.Thread] = []
        self._settled = threading.Event()
        self._new_output = threading.Condition()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None, "server not started"
        return self.process.pid

    def output(self) -> str:
        """The last lines the server printed (stdout and stderr interleaved)."""
        return "".join(self._output)

    def wait_for_output(self, text: str, timeout: float = 10.0) -> bool:
        """Wait until ``text`` appears in the output; False after ``timeout`` seconds.

        stdout and stderr are separate pipes: a line printed on stderr before the
        ready line may still be on its way when :meth:`start` returns.
        """
        with self._new_output:
            return self._new_output.wait_for(lambda: text in self.output(), timeout)

    def start(self) -> str:
        """Start the process and return its address once it prints the ready line."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        for stream, watch in ((self.process.stdout, True), (self.process.stderr, False)):
            assert stream is not None
            thread = threading.Thread(target=self._drain, args=(stream, watch), daemon=True)
            thread.start()
            self._drainers.append(thread)
        try:
            if not self._settled.wait(self.ready_timeout):
                raise FastEnvTimeout(
                    f"server did not print its ready line within {self.ready_timeout:.0f}s; "
                    f"output so far:\n{self.output()}"
                )
            if not self.address:
                code = self.process.wait(timeout=10)
                for thread in self._drainers:
                    thread.join(timeout=5)
                raise ServerStartError(f"server exited with code {code} before it was ready:\n{self.output()}")
        except BaseException:
            self.stop()
            raise
        return self.address

    def _drain(self, stream: IO[str], watch_ready: bool) -> None:
        """Collect output; on stdout, record the ready line (or EOF) and wake :meth:`start`."""
        try:
            for line in stream:
                with self._new_output:
                    self._output.append(line)
                    self._new_output.notify_all()
                if watch_ready and not self.address and line.startswith(READY_PREFIX):
                    self.address = line[len(READY_PREFIX) :].strip()
                    self._settled.set()
        except ValueError:  # stream closed under us by stop()
            pass
        finally:
            if watch_ready:
                self._settled.set()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Send SIGTERM, wait for a clean exit (SIGKILL after ``timeout``); return the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        for thread in self._drainers:
            thread.join(timeout=timeout)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the server (simulates a crash) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
