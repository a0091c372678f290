"""``fastenv replay PATH TARGET``: re-run a recording on a fresh env and report the first difference.

``fastenv replay PATH --serve``: serve the recording as if it were the env
(:mod:`fastenv.recording.playback`), with every option of ``fastenv serve``.
"""

from __future__ import annotations

import argparse
import os
import sys

from fastenv.errors import ServerConfigError
from fastenv.recording.replay import replay
from fastenv.serve_cli import add_server_options, serve_command

PLAYBACK_TARGET = "fastenv.recording.playback:RecordedEnv"


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``replay`` command to the ``fastenv`` parser."""
    command = commands.add_parser(
        "replay",
        help="re-run a recording (fastenv serve --record PATH) on a fresh env, or serve it as the env (--serve)",
        description=(
            "Build the env TARGET names (as fastenv serve does), re-run every call recorded in PATH in order, "
            "and compare each result with the recorded one. Exit status 0: every call matched; 1: a call "
            "differs (printed); 2: the recording has a gap (calls the recorder dropped), replayed up to it. "
            "With --serve instead of TARGET: serve the recording as if it were the env (fastenv serve's options "
            "apply; each client gets the recorded session from its start unless --mode shared): each call is "
            "answered with the recorded outcome of the session's next call of that method. A call whose "
            "arguments differ is answered anyway and logged (--strict: refused with PlaybackDivergence); a "
            "method whose recorded calls are used up raises RecordingExhausted."
        ),
    )
    command.add_argument("path", metavar="PATH", help="the MCAP recording")
    chosen = command.add_mutually_exclusive_group(required=True)
    chosen.add_argument(
        "target", metavar="TARGET", nargs="?", help="what to build the fresh env from (as for fastenv serve)"
    )
    chosen.add_argument("--serve", action="store_true", help="serve the recording to clients as the env")
    playback = command.add_argument_group("serving a recording (--serve)")
    playback.add_argument(
        "--session",
        default=None,
        metavar="N|ID",
        help="the recorded session to play: its number in the order sessions first called, or its id (default: 0)",
    )
    playback.add_argument(
        "--strict",
        action="store_true",
        help="refuse a call whose arguments differ from the recorded ones (PlaybackDivergence) instead of "
        "answering it with the recorded result",
    )
    add_server_options(
        command.add_argument_group("options of fastenv serve (with --serve, where --mode is per-client unless given)")
    )
    command.set_defaults(handler=_replay, mode="per-client")


def _replay(args: argparse.Namespace) -> int:
    if args.serve:
        return _serve_recording(args)
    from fastenv.target import resolve_target

    report = replay(args.path, resolve_target(args.target, args.env_kwargs))
    if report.difference is not None:
        print(f"fastenv replay: {report.difference}", file=sys.stderr)
        return 1
    if report.gap_at is not None:
        print(
            f"fastenv replay: {report.replayed} calls matched; the recording has a gap after call #{report.gap_at} "
            "(calls the recorder dropped): replay stopped there",
            file=sys.stderr,
        )
        return 2
    print(f"fastenv replay: all {report.replayed} calls matched")
    return 0


def _serve_recording(args: argparse.Namespace) -> int:
    """``fastenv serve`` of a :class:`~fastenv.recording.playback.RecordedEnv` of the recording."""
    from fastenv.recording.playback import load_script

    if args.env_kwargs:
        raise ServerConfigError("--env-kwargs is for TARGET; a served recording takes --session and --strict")
    path = os.path.abspath(args.path)
    script = load_script(path, args.session)  # a wrong --session fails now, not at the first client
    calls = ", ".join(f"{method} {count}" for method, count in script.counts().items())
    print(f"fastenv: playing session {script.session} of {path} ({calls})", file=sys.stderr, flush=True)
    args.target = PLAYBACK_TARGET
    args.env_kwargs = {"path": path, "session": script.session, "strict": args.strict}
    return serve_command(args)
