"""The ``fastenv-bench`` command line: its flags, their value checks, and the checks across flags.

:func:`build_parser` declares every flag (see :mod:`fastenv.bench.cli` for the
command itself); :func:`parse_args` also fills the defaults that depend on the
mode (``--scaling``'s transports and counts) and rejects combinations that do
not go together.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fastenv.bench import malloc
from fastenv.bench.axes import AXES, SCALING_TRANSPORTS
from fastenv.bench.render import FORMATS
from fastenv.bench.runner import TRANSPORTS
from fastenv.bench.workloads import COST_PAYLOADS, PAYLOADS, SWEEP_PAYLOADS, get_workload

__all__ = ["QUICK", "build_parser", "parse_args"]

#: ``--quick``: the settings it gives the flags left unset (and ``--no-breakdown``).
QUICK = {"steps": 30, "warmup": 2, "repeat": 1, "max_seconds": 2.0}
#: The defaults of the flags ``--quick`` changes, and of ``--payload``.
_DEFAULTS = {"steps": 1000, "warmup": 10, "repeat": 1, "max_seconds": 15.0, "payload": "small"}

#: Every name ``--transports`` knows (some run only on a ``--scaling`` axis, see parse_args).
_KNOWN_TRANSPORTS: tuple[str, ...] = tuple(dict.fromkeys((*TRANSPORTS, *SCALING_TRANSPORTS)))


def _transport_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no transport given")
    unknown = [name for name in names if name not in _KNOWN_TRANSPORTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown transport(s) {', '.join(unknown)}; choose from {', '.join(_KNOWN_TRANSPORTS)}"
        )
    return list(dict.fromkeys(names))


def _payload(text: str) -> str:
    try:
        get_workload(text)
    except KeyError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None
    return text


def _payload_list(text: str) -> list[str]:
    names = [_payload(name.strip()) for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no payload given")
    return list(dict.fromkeys(names))


def _count_list(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be integers >= 1, got {text!r}")
    return sorted(set(counts))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser(prog: str = "fastenv-bench") -> argparse.ArgumentParser:
    """The ``fastenv-bench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure env step round trips over fastenv and baseline transports.",
    )
    parser.add_argument(
        "--transports",
        type=_transport_list,
        default=None,
        help=f"comma-separated list (default: all but gym-sync, which runs only with --scaling envs; "
        f"with --scaling: the axis's, see --scaling): {','.join(_KNOWN_TRANSPORTS)}",
    )
    parser.add_argument(
        "--payload",
        type=_payload,
        default=None,
        help=f"workload: {', '.join(PAYLOADS)}, camera-<H>x<W>, or for --scaling envs {', '.join(COST_PAYLOADS)} "
        "(CPU-bound envs, about 96 µs a step, and 100 µs to 1 ms spread over the envs) (default: small)",
    )
    parser.add_argument(
        "--sweep",
        type=_payload_list,
        nargs="?",
        const=list(SWEEP_PAYLOADS),
        metavar="PAYLOADS",
        help=f"run every payload of a comma-separated list (default: {','.join(SWEEP_PAYLOADS)}); "
        "adds an MB/s table (and a throughput panel with --plot); with --scaling: one table per payload",
    )
    parser.add_argument(
        "--scaling",
        choices=list(AXES),
        help="instead of the comparison: aggregate steps/s against --counts on this axis. "
        "clients: concurrent client processes, each with its own env on one per-client server "
        f"(default transports {','.join(AXES['clients'].default_transports)}); "
        "envs: N envs per server (fastenv serve --num-envs N), one FastVectorEnv client, env steps/s, beside "
        "Gymnasium's AsyncVectorEnv(N, shared_memory=True) and SyncVectorEnv(N) (the reference), SB3's "
        "SubprocVecEnv and PufferLib's vectorizer where they import, fastenv --workers auto and its async pool "
        f"(default transports {','.join(AXES['envs'].default_transports)})",
    )
    parser.add_argument(
        "--counts",
        type=_count_list,
        default=None,
        help="--scaling counts, comma-separated (default: "
        + "; ".join(f"{name}: {','.join(map(str, axis.default_counts))}" for name, axis in AXES.items())
        + ")",
    )
    parser.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the comparison, split each fastenv row's p50 into encode, transport, env step and decode "
        "(encode/decode/env measured in this process on the same values, transport the remainder; default: on, "
        "off with --quick)",
    )
    parser.add_argument("--steps", type=_positive_int, default=None, help="timed steps per run (default: 1000)")
    parser.add_argument(
        "--warmup", type=_non_negative_int, default=None, help="untimed, verified steps per run (default: 10)"
    )
    parser.add_argument("--repeat", type=_positive_int, default=None, help="interleaved repeats (default: 1)")
    parser.add_argument(
        "--max-seconds",
        type=_positive_float,
        default=None,
        help="wall-time cap on one run's timed loop, so seed-pickle (~90 ms/step) ends (default: 15)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: "
        + " ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in QUICK.items())
        + " and --no-breakdown unless given; with --scaling, the axis's quick counts and payloads "
        + "; ".join(
            f"({name}: {','.join(map(str, axis.quick_counts))}"
            + (f" x {','.join(axis.quick_payloads)})" if axis.quick_payloads else ")")
            for name, axis in AXES.items()
        ),
    )
    parser.add_argument(
        "--timeout", type=_positive_float, default=30.0, help="server start and request timeout in s (default: 30)"
    )
    parser.add_argument(
        "--malloc",
        choices=malloc.MODES,
        default="steady",
        help="allocator setting of every process (default: steady; see fastenv.bench.malloc)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="table format (default: rich when stdout is a terminal, plain otherwise)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (default: a bar on a terminal, one line per run otherwise)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write results and machine info as JSON ('-': to stdout, tables to stderr)"
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help='also draw a PNG: latency distributions, MB/s against size with --sweep, steps/s with --scaling '
        '(needs matplotlib: pip install "fastenv[plot]")',
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = "fastenv-bench") -> argparse.Namespace:
    """Parse ``fastenv-bench`` arguments (exits with status 2 on a bad one)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    payload_given = args.payload is not None
    for name, default in _DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick and name in QUICK else default)
    if args.breakdown is None:
        args.breakdown = not args.quick
    if args.scaling is not None:
        axis = AXES[args.scaling]
        if args.quick and args.sweep is None and axis.quick_payloads and not payload_given:
            args.sweep = list(axis.quick_payloads)
        if args.sweep is not None and args.plot:
            parser.error("--plot with --scaling draws one payload: give --payload, not --sweep")
        if args.transports is None:
            args.transports = list(axis.default_transports)
        if args.counts is None:
            args.counts = list(axis.quick_counts if args.quick else axis.default_counts)
        others = [name for name in args.transports if name not in axis.transports]
        if others:
            parser.error(
                f"--scaling {axis.name} runs {', '.join(axis.transports)} only, not {', '.join(others)}"
            )
    else:
        if args.transports is None:
            args.transports = list(TRANSPORTS)
        others = [name for name in args.transports if name not in TRANSPORTS]
        if others:
            parser.error(f"{', '.join(others)} run(s) only with --scaling envs")
        if args.counts is not None:
            parser.error("--counts needs --scaling")
    return args
