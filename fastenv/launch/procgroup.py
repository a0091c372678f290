"""End a whole process group: SIGTERM, a grace period, then SIGKILL.

Runs on the remote host (inside the launch agent). A launched server is the
leader of its own process group (it was started in a new session), so the
group holds the server and every process its env spawned that did not leave
the group. Exits of processes that are not our children are awaited with
``pidfd`` (Linux ≥ 5.3) where available; a zombie counts as exited.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import threading
import time
from collections.abc import Iterable

import psutil

KILL_WAIT = 10.0  # seconds to wait for SIGKILLed processes to disappear


def group_members(pgid: int, *, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """The processes whose process group is ``pgid`` (minus ``exclude``)."""
    skip = set(exclude)
    members = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            if os.getpgid(proc.pid) == pgid and _running(proc):
                members.append(proc)
        except OSError:  # gone meanwhile
            continue
    return members


def signal_group(pgid: int, signum: int) -> bool:
    """``killpg``; False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_exited(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for ``procs`` to exit; return those still running."""
    deadline = time.monotonic() + timeout
    alive = [proc for proc in procs if _running(proc)]
    if hasattr(os, "pidfd_open"):
        alive = _wait_pidfds(alive, deadline)
    delay = 0.002
    while alive and time.monotonic() < deadline:  # no pidfd: poll with back-off
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)
        alive = [proc for proc in alive if _running(proc)]
    return [proc for proc in alive if _running(proc)]


def _wait_pidfds(procs: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Block on the processes' pidfds (readable once a process has exited)."""
    with contextlib.ExitStack() as stack, selectors.DefaultSelector() as selector:
        pending: dict[int, psutil.Process] = {}
        for proc in procs:
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError:  # already gone, or pidfd not supported by this kernel
                continue
            stack.callback(os.close, fd)
            if not _running(proc):  # the pid may have been reused before pidfd_open
                continue
            selector.register(fd, selectors.EVENT_READ)
            pending[fd] = proc
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                selector.unregister(key.fd)
                pending.pop(key.fd, None)
        return [proc for proc in procs if _running(proc)]


def end_group(pgid: int, grace: float, *, leader_exited: threading.Event | None = None) -> list[int]:
    """SIGTERM the group, wait ``grace`` seconds, SIGKILL what is left; return the pids killed.

    ``leader_exited``: when the leader is our own child, the event its reaper
    sets (we must not wait on our child with psutil, which would reap it behind
    :class:`subprocess.Popen`'s back). Otherwise the leader is awaited like any
    other member.
    """
    deadline = time.monotonic() + grace
    exclude = {pgid} if leader_exited is not None else set()
    signal_group(pgid, signal.SIGTERM)
    if leader_exited is not None:
        leader_exited.wait(grace)
    alive = wait_exited(group_members(pgid, exclude=exclude), max(0.0, deadline - time.monotonic()))
    leader_alive = leader_exited is not None and not leader_exited.is_set()
    if not alive and not leader_alive:
        return []
    signal_group(pgid, signal.SIGKILL)
    if leader_exited is not None:
        leader_exited.wait(KILL_WAIT)
    wait_exited(alive, KILL_WAIT)
    return [proc.pid for proc in alive] + ([pgid] if leader_alive else [])
