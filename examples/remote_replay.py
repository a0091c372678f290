"""Remote replay: run the task on the server, replay its states locally, render and compare.

1. The server runs the MuJoCo stack-cube task (``fastenv serve
   fastenv.examples.mujoco_stack:make_stack_cube --env-thread main``, started
   here unless ``--connect`` names one) and this client drives it with the
   scripted controller of ``headless_control.py``, calling ``get_state()``
   after every step and keeping the server's rendered camera images.
2. A local MuJoCo instance of the same env restores every state with
   ``set_state()`` and renders it; the script prints the largest absolute
   pixel difference from the server's frames.
3. The local instance also re-simulates the whole episode from the first
   state with the same actions and checks that qpos and qvel match the
   server's at every step, bit for bit.
4. A contact sheet of replayed frames (front and wrist camera side by side)
   is written as a PNG, with no imaging library: zlib and struct.

Same host, same MuJoCo and the same OpenGL driver render the same pixels
(difference 0). A server with another GPU or driver rasterizes edges
slightly differently: then the difference is a few levels on a few edge
pixels, while the physics still match bit for bit.

Usage::

    python examples/remote_replay.py --steps 120 --out replay.png
    python examples/remote_replay.py --connect HOST:PORT --transport tcp
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for headless_control

from headless_control import SERVE_ARGS, TARGET, Stacker

import fastenv
from fastenv.examples.mujoco_stack import StackCubeEnv
from fastenv.server_process import ServerProcess


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write a uint8 H×W×3 RGB image as a PNG file (8-bit truecolour, zlib-compressed)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {image.shape}")
    height, width, _ = image.shape
    # Each row starts with filter type 0 (none).
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, no filter, no interlace
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        file.write(chunk(b"IHDR", header))
        file.write(chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)))
        file.write(chunk(b"IEND", b""))


def contact_sheet(tiles: list[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """Tiles (same shape) on a grid, ``columns`` per row, separated by white gaps."""
    height, width, _ = tiles[0].shape
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = tile
    return sheet


def record(env: Any, seed: int, steps: int) -> tuple[list[dict], list[np.ndarray], list[dict]]:
    """Drive the remote env; returns (states, actions, camera frames), states[0] after reset."""
    cameras = list(env.cameras)
    obs, _ = env.reset(seed=seed)
    controller = Stacker(max_move=float(env.max_move))
    states, actions, frames = [env.get_state()], [], [{k: obs[k] for k in cameras}]
    for _ in range(steps):
        action = controller(obs)
        obs, _reward, terminated, truncated, _info = env.step(action)
        actions.append(action)
        states.append(env.get_state())
        frames.append({k: obs[k] for k in cameras})
        if terminated or truncated:
            break
    return states, actions, frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", metavar="ADDRESS", help="use this server instead of starting one")
    parser.add_argument("--transport", choices=("auto", "shm", "tcp"), default="auto")
    parser.add_argument("--steps", type=int, default=120, help="steps to run at most (the episode may end first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=240, help="camera image height (server started here)")
    parser.add_argument("--width", type=int, default=320, help="camera image width (server started here)")
    parser.add_argument("--out", default="replay_sheet.png", help="contact sheet PNG to write")
    parser.add_argument("--tiles", type=int, default=12, help="frames on the contact sheet")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless frames and physics match exactly")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds any call may take")
    args = parser.parse_args(argv)

    server = None
    if args.connect is None:
        server = ServerProcess(TARGET, SERVE_ARGS, env_kwargs={"height": args.height, "width": args.width})
        address = server.start()
    else:
        address = args.connect
    try:
        # copy=True: owned arrays, since states and frames are kept past the next calls.
        with fastenv.FastRemoteEnv(address, transport=args.transport, timeout=args.timeout, copy=True) as env:
            settings = {"height": env.height, "width": env.width, "cameras": list(env.cameras)}
            settings.update(frame_skip=env.frame_skip, max_move=env.max_move)
            if not settings["cameras"]:
                parser.error("the server's env renders no cameras (cameras=[]): nothing to replay")
            start = time.perf_counter()
            states, actions, frames = record(env, args.seed, args.steps)
            elapsed = time.perf_counter() - start
            print(
                f"server {address} over {env.transport}: {len(actions)} steps with get_state() "
                f"in {elapsed:.2f} s ({len(actions) / elapsed:.0f} steps/s)"
            )
    finally:
        if server is not None:
            server.stop()

    local = StackCubeEnv(**settings)
    try:
        # Frames: restore each state locally, render, compare with what the server rendered.
        worst, differing, replayed = 0, 0, []
        for state, remote in zip(states, frames):
            images = local.render_state(state)
            for camera, image in images.items():
                diff = int(np.abs(image.astype(np.int16) - remote[camera].astype(np.int16)).max())
                worst = max(worst, diff)
                differing += diff > 0
            replayed.append(images)
        count = len(states) * len(settings["cameras"])
        print(
            f"replayed {len(states)} states locally: max abs pixel difference from the server's frames = {worst} "
            f"({differing} of {count} frames differ)"
        )

        # Physics: re-simulate from the first state with the same actions.
        local.set_state(states[0])
        mismatched = 0
        for action, expected in zip(actions, states[1:]):
            local.step(action)
            got = local.get_state()
            same = np.array_equal(got["qpos"], expected["qpos"]) and np.array_equal(got["qvel"], expected["qvel"])
            mismatched += not same
        print(
            f"re-simulated {len(actions)} steps from the first state: qpos/qvel bit-identical at "
            f"{len(actions) - mismatched} of {len(actions)} steps"
        )
    finally:
        local.close()

    picks = np.unique(np.linspace(0, len(replayed) - 1, min(args.tiles, len(replayed))).round().astype(int))
    tiles = [np.concatenate([replayed[i][c] for c in settings["cameras"]], axis=1) for i in picks]
    sheet = contact_sheet(tiles, columns=3 if len(settings["cameras"]) > 1 else 4)
    out = Path(args.out)
    write_png(out, sheet)
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]}, steps {', '.join(map(str, picks))})")
    return 1 if args.strict and (worst or mismatched) else 0


if __name__ == "__main__":
    sys.exit(main())
