"""`fastenv replay PATH --serve`: a recording served as the env; the recorder's counters in the metrics.

Every server is the real CLI in its own process, ready once it prints its
ready line; every call is bounded by a timeout and every wait is polled.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mcap", reason='recording needs mcap (pip install "fastenv[record]")')
pytest.importorskip("gymnasium")

from gymnasium import spaces

from fastenv import (
    FastRemoteEnv,
    PlaybackDivergence,
    RecordingExhausted,
    RemoteEnvError,
)
from fastenv.recording import read_calls
from fastenv.recording.playback import replayed_error
from fastenv.server_process import ServerProcess
from fastenv.top import scrape
from fastenv.wire import type_name
from tests.assertions import assert_same
from tests.polling import wait_until
from tests.proxy import free_port

ARM = f"{Path(__file__).resolve().parent / 'envs' / 'playback_envs.py'}:Arm"
T = 20.0
ACTIONS = [action.astype(np.float32) for action in np.random.default_rng(0).uniform(-1, 1, (12, 2))]
# The recorded session: (method, args, kwargs); explode raises KeyError on the env.
CALLS = [
    ("reset", (), {"seed": 3}),
    *(("step", (action,), {}) for action in ACTIONS[:8]),
    ("get_state", (), {}),
    ("explode", ("no joint 7",), {}),
    *(("step", (action,), {}) for action in ACTIONS[8:]),
    ("get_state", (), {}),
]
RAISES = 10  # the index of the call that raises


@dataclass(frozen=True)
class Recorded:
    path: Path
    outcomes: list[Any]  # what the env returned (or raised) for each of CALLS
    env_hash: str
    observation_space: Any


def drive(env: FastRemoteEnv, calls: list[tuple[str, tuple, dict]]) -> list[Any]:
    """Each call's result (an owned copy), or ``("raised", remote type, message, is a KeyError)``."""
    outcomes: list[Any] = []
    for method, args, kwargs in calls:
        try:
            outcomes.append(copy.deepcopy(getattr(env, method)(*args, **kwargs)))
        except RemoteEnvError as exc:
            outcomes.append(("raised", exc.remote_type, exc.remote_message, isinstance(exc, KeyError)))
    return outcomes


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """One session of the Arm env driven through CALLS by a real `fastenv serve --record`."""
    path = tmp_path_factory.mktemp("playback") / "arm.mcap"
    with ServerProcess(ARM, ["--record", str(path)]) as server:
        with FastRemoteEnv(server.address, timeout=T) as env:
            outcomes = drive(env, CALLS)
            found = Recorded(path, outcomes, env.env_hash, env.observation_space)
        assert server.stop() == 0  # a clean stop finishes the file
    assert outcomes[RAISES] == ("raised", "KeyError", "'no joint 7'", True)
    yield found


def serve_recording(serve: Any, recorded: Recorded, *extra: str) -> ServerProcess:
    command = [sys.executable, "-m", "fastenv", "replay", str(recorded.path), "--serve", "--port", "0", *extra]
    return serve("", command=command)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_a_served_recording_answers_as_the_env_did(serve: Any, recorded: Recorded, transport: str) -> None:
    server = serve_recording(serve, recorded)
    with FastRemoteEnv(server.address, transport=transport, timeout=T) as env:
        assert env.transport == transport
        assert env.env_hash == recorded.env_hash  # described as the recorded env
        assert isinstance(env.observation_space, spaces.Dict)
        assert env.observation_space == recorded.observation_space
        assert list(env.observation_space.spaces) == ["pose", "joints"]  # in the env's order
        assert env.metadata == {"render_modes": [], "render_fps": 50}
        outcomes = drive(env, CALLS)
        for played, original in zip(outcomes, recorded.outcomes, strict=True):
            assert_same(played, original)
        results = [call.value for call in read_calls(str(recorded.path)) if call.ok]
        assert_same([outcome for index, outcome in enumerate(outcomes) if index != RAISES], results)

        with pytest.raises(RecordingExhausted, match=r"ran out of step\(\) calls"):
            env.step(ACTIONS[0])
        with pytest.raises(RecordingExhausted, match=r"get_state"):
            env.get_state()
        report = env.call("fastenv_playback")  # the server goes on serving this session
        assert report["answered"] == {"reset": 1, "step": 12, "get_state": 2, "explode": 1}
        assert set(report["left"].values()) == {0} and report["divergences"] == {}
    with FastRemoteEnv(server.address, transport=transport, timeout=T) as again:  # and new clients, from the start
        assert_same(copy.deepcopy(again.reset(seed=3)), recorded.outcomes[0])


def test_a_different_call_is_answered_and_counted_or_refused_when_strict(serve: Any, recorded: Recorded) -> None:
    wrong = np.zeros(2, dtype=np.float32)
    lenient = serve_recording(serve, recorded)
    with FastRemoteEnv(lenient.address, timeout=T) as env:
        assert_same(copy.deepcopy(env.reset(seed=4)), recorded.outcomes[0])
        assert_same(copy.deepcopy(env.step(wrong)), recorded.outcomes[1])
        report = env.call("fastenv_playback")
        assert report["divergences"] == {"reset": 1, "step": 1}
        assert "kwargs/seed" in report["first_divergence"] and "recorded 3, given 4" in report["first_divergence"]
    assert lenient.wait_for_output("differs from the recording", timeout=T), lenient.output()

    strict = serve_recording(serve, recorded, "--strict")
    with FastRemoteEnv(strict.address, timeout=T) as env:
        env.reset(seed=3)
        with pytest.raises(PlaybackDivergence, match=r"step\(\) call 0 .* at args/0"):
            env.step(wrong)
        assert_same(copy.deepcopy(env.step(ACTIONS[0])), recorded.outcomes[1])  # the recorded call stayed next
        assert env.call("fastenv_playback")["divergences"] == {}


def test_a_session_that_is_not_recorded_is_refused_before_serving(recorded: Recorded) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastenv", "replay", str(recorded.path), "--serve", "--session", "5"],
        capture_output=True,
        text=True,
        timeout=T,
        check=False,
    )
    assert done.returncode == 2
    assert "has no session '5'" in done.stderr and "ready" not in done.stdout


@pytest.mark.parametrize(
    ("name", "message", "builtin"),
    [("KeyError", "'no joint 7'", KeyError), ("UnicodeDecodeError", "bad byte", None), ("sim.errors.Diverged", "nan", None)],
)
def test_a_recorded_error_is_raised_under_its_recorded_name(name: str, message: str, builtin: type | None) -> None:
    error = replayed_error({"kind": "remote", "type": name, "message": message, "traceback": ""})
    assert (type_name(error), str(error)) == (name, message)  # what the server puts in the error body
    assert builtin is None or isinstance(error, builtin)


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == want for k, want in labels.items()))


def recording_counts(address: str) -> tuple[float, float, float]:
    """(written, dropped, queued) as the metrics say now."""
    samples = scrape(address)
    return (
        value(samples, "fastenv_recording_records_total", outcome="written"),
        value(samples, "fastenv_recording_records_total", outcome="dropped"),
        value(samples, "fastenv_recording_queue_records"),
    )


def fastenv_top(address: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fastenv", "top", address, "--once"]
    return subprocess.run(command, capture_output=True, text=True, timeout=T, check=False)


def test_metrics_count_what_the_recorder_wrote(serve: Any, tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    port = free_port()
    server = serve(ARM, "--record", str(tmp_path / "run.mcap"), "--metrics-port", str(port))
    address = f"127.0.0.1:{port}"
    with FastRemoteEnv(server.address, timeout=T) as env:
        env.reset(seed=0)
        for action in ACTIONS:
            env.step(action)
        env.get_state()
        assert wait_until(lambda: recording_counts(address) == (14, 0, 0), timeout=T), recording_counts(address)
        samples = scrape(address)
        assert value(samples, "fastenv_recording_bytes_total") > 0
        assert value(samples, "fastenv_recording_failed") == 0
        top = fastenv_top(address)
        assert top.returncode == 0, top.stderr
        assert "recording: 14 written, 0 dropped" in top.stdout, top.stdout


def test_metrics_count_the_calls_a_tiny_queue_drops(serve: Any, tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    port = free_port()
    path = tmp_path / "run.mcap"
    server = serve(ARM, "--record", str(path), "--record-queue", "1", "--metrics-port", str(port))
    address = f"127.0.0.1:{port}"
    with FastRemoteEnv(server.address, timeout=T) as env:
        env.reset(seed=0)
        steps = len(env.batch_step([ACTIONS[0]] * 2000))  # one round trip: the writer cannot pop between steps
    assert steps == 2000

    def settled() -> bool:
        written, dropped, queued = recording_counts(address)
        return queued == 0 and written + dropped == 1 + steps

    assert wait_until(settled, timeout=T), recording_counts(address)
    written, dropped, _ = recording_counts(address)
    assert dropped > 0 and written > 0
    assert server.stop() == 0
    assert len(list(read_calls(str(path)))) == written


def test_metrics_say_when_a_disk_error_ended_the_recording(serve: Any) -> None:
    pytest.importorskip("prometheus_client")
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    port = free_port()
    server = serve(ARM, "--record", "/dev/full", "--metrics-port", str(port))
    address = f"127.0.0.1:{port}"
    with FastRemoteEnv(server.address, timeout=T) as env:
        env.reset(seed=0)

        def failed() -> bool:  # a chunk reaches the disk once it is full: step until one does
            env.batch_step([ACTIONS[0]] * 500)
            return value(scrape(address), "fastenv_recording_failed") == 1

        assert wait_until(failed, timeout=T)
        env.batch_step([ACTIONS[0]] * 10)  # not recorded any more: dropped
        assert value(scrape(address), "fastenv_recording_records_total", outcome="dropped") >= 10
    top = fastenv_top(address)
    assert "FAILED (disk error)" in top.stdout, top.stdout


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_a_served_recording_of_a_vector_server_answers_a_vector_client(
    serve: Any, tmp_path: Path, transport: str
) -> None:
    """A recording of ``fastenv serve --num-envs N`` plays back batches to a FastVectorEnv, as the server did."""
    from fastenv import FastVectorEnv

    path = tmp_path / "vector.mcap"
    actions = [np.array([0, 1, 1]), np.array([1, 0, 1]), np.array([1, 1, 0])]
    with ServerProcess("CartPole-v1", ["--num-envs", "3", "--record", str(path)]) as server:
        with FastVectorEnv(server.address, transport=transport, timeout=T) as envs:
            recorded = [copy.deepcopy(envs.reset(seed=5))]
            recorded += [copy.deepcopy(envs.step(action)) for action in actions]
        assert server.stop() == 0
    command = [sys.executable, "-m", "fastenv", "replay", str(path), "--serve", "--port", "0", "--strict"]
    player = serve("", command=command)  # strict: a batched call that differs from the recorded one raises
    with FastVectorEnv(player.address, transport=transport, timeout=T) as envs:
        assert envs.num_envs == 3 and envs.single_action_space == spaces.Discrete(2)
        with pytest.raises(PlaybackDivergence, match="recorded"):
            envs.reset(seed=6)  # seeds 6, 7, 8 where the recording has 5, 6, 7
        played = [copy.deepcopy(envs.reset(seed=5))] + [copy.deepcopy(envs.step(action)) for action in actions]
        assert_same(played, recorded)
