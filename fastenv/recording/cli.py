"""``fastenv replay PATH TARGET``: re-run a recording on a fresh env and report the first difference."""

from __future__ import annotations

import argparse
import json
import sys

from fastenv.recording.replay import replay


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``replay`` command to the ``fastenv`` parser."""
    command = commands.add_parser(
        "replay",
        help="re-run a recording (fastenv serve --record PATH) on a fresh env; report the first call that differs",
        description=(
            "Build the env TARGET names (as fastenv serve does), re-run every call recorded in PATH in order, "
            "and compare each result with the recorded one. Exit status 0: every call matched; 1: a call "
            "differs (printed); 2: the recording has a gap (calls the recorder dropped), replayed up to it."
        ),
    )
    command.add_argument("path", metavar="PATH", help="the MCAP recording")
    command.add_argument("target", metavar="TARGET", help="what to build the fresh env from (as for fastenv serve)")
    command.add_argument("--env-kwargs", type=json.loads, default=None, help="JSON keyword arguments for TARGET")
    command.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
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
