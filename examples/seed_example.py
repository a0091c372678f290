"""The seed's ``example.py`` on fastenv: serve on the sim host, or start it there over SSH and drive it.

The seed's flow, unchanged on the command line::

    python seed_example.py server [--port 8888] [--task NAME]        # on the sim host: serve until Ctrl-C
    python seed_example.py --remote_host HOST [--port 8888]           # drive a server that runs already
    python seed_example.py --auto_start_remote --remote_host HOST --task NAME
                                                                      # start it on HOST over SSH, then drive it

``--auto_start_remote`` goes through :meth:`fastenv.compat.RemoteEnv.auto_start_remote_server`:
the remote side runs ``fastenv serve seed_example.py:create_local_env`` in
``--remote_path`` (default: this file's directory, i.e. the same checkout path
on both machines) with ``task_name`` / ``num_envs``; the call returns as soon
as the server is ready; the client reaches it through an SSH tunnel; closing
the client stops it. ``HOST`` is ``[user@]host[:port]`` or an alias of your
``~/.ssh/config``. Where the seed hard-coded
``source ~/anaconda3/etc/profile.d/conda.sh && conda activate roboverse``, pass
``--setup``; pick the remote interpreter with ``--python``.

Replace :func:`create_local_env` with your simulator (the seed built a
metasim handler there); here it is fastenv's built-in old-Gym-style random walk.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from fastenv.compat import RemoteEnv, RemoteServer
from fastenv.examples import LegacyEnv


def create_local_env(task_name: str = "stack_cube", num_envs: int = 1) -> Any:
    """The env to serve: old Gym API (``reset() -> obs``, ``step -> obs, reward, done, info``)."""
    env = LegacyEnv(max_steps=50 * num_envs)
    env.seed(sum(map(ord, task_name)))  # a task-dependent, reproducible start
    return env


def server_example(port: int = 8888, task_name: str = "stack_cube", num_envs: int = 1) -> None:
    """Serve the env on 127.0.0.1:``port`` until Ctrl-C or SIGTERM (reach it over SSH, see --auto_start_remote)."""
    server = RemoteServer(port=port)
    server.set_environment(create_local_env(task_name, num_envs))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.start()  # prints `fastenv: ready tcp://127.0.0.1:PORT`, blocks
    finally:
        server.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def client_example(
    remote_host: str = "localhost",
    port: int = 8888,
    auto_start_remote: bool = False,
    task_name: str = "stack_cube",
    num_envs: int = 1,
    steps: int = 10,
    **launch_kwargs: Any,
) -> bool:
    """Drive the env (starting its server on ``remote_host`` first when ``auto_start_remote``); True if it ran."""
    env = RemoteEnv(remote_host, port)
    try:
        if auto_start_remote:
            path = launch_kwargs.pop("remote_script_path", None) or os.path.dirname(os.path.abspath(__file__))
            launch_kwargs.setdefault("script", os.path.basename(__file__))
            if not env.auto_start_remote_server(remote_host, path, task_name, num_envs, **launch_kwargs):
                return False
        if not env.connect():
            return False
        obs = env.reset()
        print(f"Reset: obs={obs}")
        for i in range(steps):
            obs, reward, done, info = env.step([0.1])
            print(f"Step {i}: reward={reward:.3f}, done={done}, info={info}")
            if done:
                obs = env.reset()
        return True
    finally:
        env.close()  # also stops a server auto_start_remote_server started


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["server", "client"], default="client")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--remote_host", default="localhost", help="[user@]host[:port] or an SSH config alias")
    parser.add_argument("--auto_start_remote", action="store_true", help="start the server on --remote_host over SSH")
    parser.add_argument("--task", default="stack_cube")
    parser.add_argument("--num_envs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--remote_path", help="this script's directory on the remote host (default: the same as here)")
    parser.add_argument("--python", default="python", help="remote Python with fastenv installed")
    parser.add_argument("--setup", help="remote shell code run first, e.g. 'conda activate sim'")
    parser.add_argument("--ssh_config", help="SSH client config (default: ~/.ssh/config)")
    if argv[:1] == ["server"]:  # the seed's `python example.py server`
        argv = ["--mode", "server", *argv[1:]]
    args = parser.parse_args(argv)
    if args.mode == "server":
        server_example(args.port, args.task, args.num_envs)
        return 0
    launch_kwargs: dict[str, Any] = {"python": args.python, "setup": args.setup, "ssh_config": args.ssh_config}
    if args.remote_path:
        launch_kwargs["remote_script_path"] = args.remote_path
    ok = client_example(
        args.remote_host, args.port, args.auto_start_remote, args.task, args.num_envs, args.steps, **launch_kwargs
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
