"""Serving a recording as if it were the env (``fastenv replay PATH --serve``).

:class:`RecordedEnv` answers every call from one recorded session. It is an
ordinary env to :class:`~fastenv.EnvServer`, so a client connects with
:class:`~fastenv.FastRemoteEnv` over any transport, reads the recorded env's
description (class, spaces, ``metadata``, ``spec``, methods; ``env_hash``
is the recorded env's) and drives it as it drove the env: a controller is
tested offline against what the env once did.

A call of a method is answered with the session's next recorded call of that
method (each method has its own cursor, so calls of different methods may
interleave differently than they were recorded). A call the env raised from
raises again: the client gets the recorded type name and message.

- **Divergence.** A call whose arguments differ from the recorded call's is
  answered with the recorded result anyway, counted and logged (a warning
  for the first of each method); :meth:`RecordedEnv.fastenv_playback`
  reports the counts. With ``strict=True`` (``--strict``) it raises
  :class:`~fastenv.PlaybackDivergence` instead, and the recorded call stays
  next: the same call with the recorded arguments is answered.
- **Exhaustion.** A method whose recorded calls are all answered raises
  :class:`~fastenv.RecordingExhausted`; the other methods go on answering,
  and the server goes on serving.

Calls the server made itself (a deadline's fallbacks) answered no client and
are left out. A recording with dropped calls (a gap in its call numbers)
plays what it holds, with a warning: past the gap, answers belong to later
calls than the client's. Nothing in a recording is imported or called; a
recorded error is raised as an exception class made to carry its name.
"""

from __future__ import annotations

import builtins
import collections
import copy
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

from fastenv import gym_types  # noqa: F401  (descriptions hold Gymnasium spaces: registers them with the codec)
from fastenv.errors import PlaybackDivergence, RecordingExhausted
from fastenv.recording.reader import (
    RecordedCall,
    RecordingError,
    read_calls,
    read_descriptions,
)
from fastenv.recording.replay import PSEUDO_PREFIX, first_difference

log = logging.getLogger("fastenv.recording")


@dataclass(frozen=True)
class Script:
    """What one recorded session holds for playback.

    Attributes:
        path: the recording.
        session: the session's id.
        description: its env's description, as the handshake sent it.
        calls: its calls by method, in the order they were made.
        gaps: whether the recording dropped calls (its call numbers have gaps).
    """

    path: str
    session: str
    description: dict[str, Any]
    calls: dict[str, tuple[RecordedCall, ...]]
    gaps: bool

    def counts(self) -> dict[str, int]:
        """How many calls of each method the session made."""
        return {method: len(calls) for method, calls in self.calls.items()}


def load_script(path: str, session: str | int | None = None) -> Script:
    """The calls and description of one session of ``path`` (the file is read once per version, then cached).

    ``session``: the session's id, or its number in the order the sessions
    first called (None or 0: the first). :class:`RecordingError` when there
    is no such session.
    """
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise RecordingError(f"cannot read the recording {path}: {exc.strerror}") from exc
    real = os.path.realpath(path)
    sessions, descriptions, gaps = _read(real, stat.st_mtime_ns, stat.st_size)
    chosen = _choose(path, list(sessions), session)
    description = descriptions.get(chosen, {}).get("description", {})
    if not description:
        log.warning("%s holds no description of session %s: clients see no spaces", path, chosen)
    calls: dict[str, list[RecordedCall]] = collections.defaultdict(list)
    for call in sessions[chosen]:
        calls[call.method].append(call)
    return Script(real, chosen, description, {method: tuple(made) for method, made in calls.items()}, gaps)


@functools.lru_cache(maxsize=4)
def _read(path: str, _mtime_ns: int, _size: int) -> tuple[dict[str, list[RecordedCall]], dict[str, Any], bool]:
    """Each session's calls (in the order sessions first called), the descriptions, and whether calls were dropped.

    One version of the file: its time and size are part of the cache key.
    """
    sessions: dict[str, list[RecordedCall]] = {}
    numbers = set()
    for call in read_calls(path):
        numbers.add(call.seq)
        if not call.fallback and not call.method.startswith(PSEUDO_PREFIX):
            sessions.setdefault(call.session, []).append(call)
    gaps = bool(numbers) and (min(numbers) != 1 or len(numbers) != max(numbers) - min(numbers) + 1)
    if gaps:
        log.warning("%s dropped calls while recording: past a gap, answers belong to later calls", path)
    return sessions, read_descriptions(path), gaps


def _choose(path: str, sessions: list[str], wanted: str | int | None) -> str:
    """The id of the ``wanted`` session among ``sessions`` (in the order they first called)."""
    if not sessions:
        raise RecordingError(f"{path} holds no recorded calls")
    if wanted is None:
        return sessions[0]
    if str(wanted) in sessions:
        return str(wanted)
    if str(wanted).isdigit() and int(wanted) < len(sessions):
        return sessions[int(wanted)]
    listed = ", ".join(f"{index}: {session}" for index, session in enumerate(sessions))
    raise RecordingError(f"{path} has no session {wanted!r}; it holds {listed}")


class RecordedEnv:
    """An env that answers every call from one session of a recording (see :mod:`fastenv.recording.playback`).

    Serve it with ``fastenv replay PATH --serve``, or as any env:
    ``EnvServer(factory=lambda: RecordedEnv(path))``.

    Args:
        path: the MCAP file ``fastenv serve --record PATH`` wrote.
        session: which recorded session to play: its id, or its number in
            the order the sessions first called (default: the first).
        strict: raise :class:`~fastenv.PlaybackDivergence` for a call whose
            arguments differ from the recorded call's, instead of answering it
            with the recorded result (counted and logged).
    """

    def __init__(self, path: str, session: str | int | None = None, strict: bool = False) -> None:
        self._script = load_script(path, session)
        self._strict = strict
        self._answered: collections.Counter[str] = collections.Counter()
        self._divergences: collections.Counter[str] = collections.Counter()
        self._first_divergence: str | None = None
        self._closed = False

    def __fastenv_description__(self) -> dict[str, Any]:
        """The recorded env's description: clients see its class, spaces, attributes and methods."""
        return self._script.description

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attributes = self._script.description.get("attributes", {})
        if name in attributes:
            return attributes[name]
        if name in self._script.calls:
            return functools.partial(self._answer, name)
        raise AttributeError(f"the recorded session made no {name}() calls, and its env has no attribute {name!r}")

    def _answer(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """The recorded outcome of the next call of ``method`` (its result, or its error raised)."""
        calls = self._script.calls[method]
        index = self._answered[method]
        if index >= len(calls):
            raise RecordingExhausted(
                f"the recording ran out of {method}() calls: session {self._script.session} made {len(calls)}, "
                "all answered"
            )
        call = calls[index]
        found = first_difference((call.args, dict(sorted(call.kwargs.items()))), (args, dict(sorted(kwargs.items()))))
        if found is not None:
            self._diverged(call, index, *found)
        self._answered[method] = index + 1
        if not call.ok:
            raise replayed_error(call.value)
        return copy.deepcopy(call.value)  # the script is shared by every playback of this file

    def _diverged(self, call: RecordedCall, index: int, path: str, recorded: Any, given: Any) -> None:
        """Count (or, strict, raise) a call whose arguments differ from ``call``'s."""
        head, _, rest = path.partition("/")
        where = ("args" if head == "0" else "kwargs") + (f"/{rest}" if rest else "")
        text = (
            f"{call.method}() call {index} (#{call.seq}) differs from the recording at {where}: "
            f"recorded {recorded!r:.200}, given {given!r:.200}"
        )
        if self._strict:
            raise PlaybackDivergence(f"{text}; the recorded call is still next")
        first = not self._divergences[call.method]
        self._divergences[call.method] += 1
        if self._first_divergence is None:
            self._first_divergence = text
        log.log(logging.WARNING if first else logging.INFO, "playback: %s (answered with the recorded result)", text)

    def fastenv_playback(self) -> dict[str, Any]:
        """Where the playback stands; a client reads it with ``env.call("fastenv_playback")``.

        Returns ``{"session", "answered", "left", "divergences", "first_divergence", "gaps"}``:
        ``answered``, ``left`` and ``divergences`` count calls by method.
        """
        left = {method: count - self._answered[method] for method, count in self._script.counts().items()}
        return {
            "session": self._script.session,
            "answered": dict(self._answered),
            "left": left,
            "divergences": dict(self._divergences),
            "first_divergence": self._first_divergence,
            "gaps": self._script.gaps,
        }

    def close(self) -> None:
        """Log what the playback answered (the server closes a session's env when it ends)."""
        if self._closed:
            return
        self._closed = True
        diverged = sum(self._divergences.values())
        log.log(
            logging.WARNING if diverged else logging.INFO,
            "playback of session %s ended: answered %s; %d call(s) differed from the recording",
            self._script.session,
            dict(self._answered),
            diverged,
        )


def replayed_error(body: dict[str, Any]) -> Exception:
    """An exception the server reports as the recorded error ``body``: its type name and message.

    A recorded builtin error is an instance of that builtin; any other is an
    ``Exception`` subclass made to carry the recorded name (nothing is imported).
    """
    name, message = str(body.get("type", "Exception")), str(body.get("message", ""))
    try:
        return _error_class(name, True)(message)
    except TypeError:  # a builtin whose constructor takes more than a message
        return _error_class(name, False)(message)


@functools.lru_cache(maxsize=256)
def _error_class(name: str, builtin_base: bool) -> type[Exception]:
    module, _, qualname = name.rpartition(".")
    base = getattr(builtins, name, None) if builtin_base and not module else None
    if not (isinstance(base, type) and issubclass(base, Exception)):
        base = Exception
    namespace = {"__module__": module or "builtins", "__qualname__": qualname, "__str__": _message}
    return type(qualname, (base,), namespace)


def _message(exc: BaseException) -> str:
    """The recorded message, as it was (``KeyError`` would quote it)."""
    return str(exc.args[0]) if exc.args else ""
