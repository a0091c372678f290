"""Recordings: `fastenv serve --record` writes MCAP, the mcap reader opens it, `fastenv replay` re-runs it.

A recording to a disk that does not take data (a pipe nobody reads, a full
device) never stalls the session: calls are dropped and counted instead.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mcap", reason='recording needs mcap (pip install "fastenv[record]")')

from mcap.reader import make_reader

from fastenv import FastRemoteEnv
from fastenv.examples.mujoco_render import configure_gl
from fastenv.recording import read_calls
from fastenv.recording.reader import read_descriptions, read_metadata
from fastenv.recording.replay import first_difference
from fastenv.server import EnvServer

configure_gl()
MUJOCO_TARGET = "fastenv.examples.mujoco_stack:make_stack_cube"
SMALL = {"height": 48, "width": 64}
TIMEOUT = 60.0


def _replay(path: Path, target: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastenv", "replay", str(path), target, *extra],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _owned(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {key: _owned(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_owned(item) for item in value)
    return value


def _decode_image(data: bytes) -> tuple[int, int, str, bytes]:
    """(height, width, encoding, pixels) of a CDR sensor_msgs/Image, read field by field."""
    offset = 4 + 8  # encapsulation header, stamp
    (length,) = struct.unpack_from("<I", data, offset)
    offset += 4 + length
    offset += -(offset - 4) % 4
    height, width = struct.unpack_from("<II", data, offset)
    offset += 8
    (length,) = struct.unpack_from("<I", data, offset)
    encoding = data[offset + 4 : offset + 4 + length - 1].decode()
    offset += 4 + length + 1  # the string, then is_bigendian
    offset += -(offset - 4) % 4
    _step, size = struct.unpack_from("<II", data, offset)
    offset += 8
    return height, width, encoding, data[offset : offset + size]


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_mujoco_session_recorded_opened_and_replayed(serve: Any, tmp_path: Path, transport: str) -> None:
    pytest.importorskip("mujoco")
    path = tmp_path / "session.mcap"
    server = serve(MUJOCO_TARGET, "--env-thread", "dedicated", "--record", str(path), env_kwargs=SMALL)
    rng = np.random.default_rng(7)
    returned = []
    with FastRemoteEnv(server.address, transport=transport, timeout=TIMEOUT) as env:
        returned.append(_owned(env.reset(seed=3)))
        for _ in range(20):
            returned.append(_owned(env.step(rng.uniform(-1, 1, 4).astype(np.float32))))
    assert server.stop() == 0  # a clean stop finishes the file

    calls = list(read_calls(str(path)))
    assert [call.method for call in calls] == ["reset"] + ["step"] * 20
    assert [call.seq for call in calls] == list(range(calls[0].seq, calls[0].seq + 21))
    for call, value in zip(calls, returned):
        assert first_difference(call.value, value) is None
    assert read_metadata(str(path))["fastenv.recording.summary"] == {"recorded": "21", "dropped": "0"}
    (description,) = read_descriptions(str(path)).values()
    assert "observation_space" in description["description"]["attributes"]

    # The camera frames open as ROS 2 images in any MCAP reader.
    with open(path, "rb") as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        assert summary is not None
        topics = {channel.topic for channel in summary.channels.values()}
        images = [
            (channel.topic, message)
            for schema, channel, message in reader.iter_messages()
            if schema is not None and schema.name == "sensor_msgs/msg/Image"
        ]
    assert {"/fastenv/reset", "/fastenv/step"} <= topics
    assert images, f"no camera topics among {sorted(topics)}"
    topic, message = images[-1]
    height, width, encoding, pixels = _decode_image(message.data)
    assert (height, width, encoding) == (SMALL["height"], SMALL["width"], "rgb8")
    frames = [item for item in _arrays(returned[-1]) if item.shape == (height, width, 3)]
    assert any(frame.tobytes() == pixels for frame in frames), topic

    done = _replay(path, MUJOCO_TARGET, "--env-kwargs", '{"height": 48, "width": 64}')
    assert done.returncode == 0, done.stderr
    assert "all 21 calls matched" in done.stdout


def _arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        return [array for item in value.values() for array in _arrays(item)]
    if isinstance(value, (tuple, list)):
        return [array for item in value for array in _arrays(item)]
    return []


def test_replay_reports_the_first_call_that_differs(serve: Any, tmp_path: Path) -> None:
    path = tmp_path / "cartpole.mcap"
    server = serve("CartPole-v1", "--record", str(path))
    with FastRemoteEnv(server.address, timeout=TIMEOUT) as env:
        env.reset(seed=5)
        for _ in range(5):
            env.step(1)
    assert server.stop() == 0
    assert _replay(path, "CartPole-v1").returncode == 0
    differs = _replay(path, "MountainCar-v0")
    assert differs.returncode == 1
    assert "call 0" in differs.stderr and "reset" in differs.stderr


def test_env_errors_are_recorded_and_replayed(serve: Any, tmp_path: Path, test_env_target: Any) -> None:
    path = tmp_path / "faulty.mcap"
    server = serve(test_env_target("Faulty"), "--record", str(path))
    with FastRemoteEnv(server.address, timeout=TIMEOUT) as env:
        env.reset()
        env.step(0)
        with pytest.raises(ValueError, match="exploded on purpose"):
            env.step("boom")
    assert server.stop() == 0
    calls = list(read_calls(str(path)))
    assert [(call.method, call.ok) for call in calls] == [("reset", True), ("step", True), ("step", False)]
    assert calls[-1].value["message"] == "the env exploded on purpose"
    done = _replay(path, test_env_target("Faulty"))
    assert done.returncode == 0, done.stderr


def _serve_recording_to(target: str, **options: Any) -> EnvServer:
    import gymnasium

    return EnvServer(factory=lambda: gymnasium.make("CartPole-v1"), record=target, **options)


def _step_many(server: EnvServer, steps: int) -> None:
    with FastRemoteEnv(server.address, timeout=TIMEOUT) as env:
        env.reset(seed=0)
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(0)
            if terminated or truncated:
                env.reset()


def test_a_pipe_nobody_reads_never_stalls_the_session(tmp_path: Path) -> None:
    fifo = tmp_path / "stalled.mcap"
    os.mkfifo(fifo)
    reader_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read: the pipe fills
    try:
        server = _serve_recording_to(str(fifo), record_queue=64)  # a small queue fills fast
        with server:
            server.start()
            recorder = server._dispatcher.recorder
            assert recorder is not None
            _step_many(server, 3000)
            assert recorder.dropped > 0
            recorder.close(timeout=0.5)
    finally:
        os.close(reader_fd)


def test_a_full_disk_ends_the_recording_not_the_session() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    server = _serve_recording_to("/dev/full")
    with server:
        server.start()
        _step_many(server, 3000)
        recorder = server._dispatcher.recorder
        assert recorder is not None
        server.stop()
    assert recorder.failure is not None and "space" in recorder.failure.lower()
    assert recorder.dropped > 0
