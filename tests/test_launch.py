"""fastenv.launch against a real OpenSSH server on 127.0.0.1 (see tests/sshd.py).

The "remote" host is this machine, reached over SSH as the current user with
keys, known_hosts and SSH config all in a temporary directory. Remote
processes are real processes here, so psutil checks what was left running.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paramiko
import psutil
import pytest
from sshd import SSHServer, unavailable_reason, write_key

from fastenv import FastRemoteEnv, HostKeyError, LaunchError, LaunchTimeout, SSHConnectError
from fastenv.compat import RemoteEnv, auto_start_remote_server
from fastenv.examples import CameraEnv, VectorEnv
from fastenv.launch import LaunchedServer, launch, launch_and_connect
from fastenv.launch.command import remote_command, shell_path
from fastenv.launch.connection import open_connection
from fastenv.launch.destination import load_ssh_config, parse_host_spec, resolve_destination
from fastenv.launch.launcher import _plan_route
from fastenv.launch.procgroup import wait_exited
from fastenv.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
VECTOR = "fastenv.examples:VectorEnv"
SPAWNING = f"{Path(__file__).parent / 'envs' / 'launch_envs.py'}:SpawningEnv"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no test sshd: {reason}")
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
    except (OSError, RuntimeError, paramiko.SSHException) as exc:
        pytest.skip(f"cannot start a test sshd: {exc}")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the test's own keys: no SSH agent of the machine running the tests."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "launch-state"


@pytest.fixture
def launched(sshd: SSHServer, state_dir: Path) -> Iterator[Callable[..., LaunchedServer]]:
    """Factory: ``launched(target, host="simbox", **launch_kwargs)``; every server is stopped at teardown."""
    made: list[LaunchedServer] = []

    def start(target: str = VECTOR, host: str = "simbox", **kwargs: Any) -> LaunchedServer:
        kwargs = {**launch_defaults(sshd, state_dir), **kwargs}
        server = launch(host, target, **kwargs)
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop()


def launch_defaults(sshd: SSHServer, state_dir: Path) -> dict[str, Any]:
    return {
        "python": sys.executable,
        "ssh_config": sshd.config,
        "state_dir": str(state_dir),
        "timeout": 30.0,
        "connect_timeout": 10.0,
    }


def gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether ``pid`` has exited (a zombie counts), waiting up to ``timeout`` seconds."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return not wait_exited([proc], timeout)


def host_of(address: str) -> str:
    return address.removeprefix("tcp://").rsplit(":", 1)[0]


# ---------------------------------------------------------------- routes and data


def test_tunnel_carries_control_and_data_stream(launched) -> None:
    server = launched("fastenv.examples:CameraEnv", tunnel=True, env_kwargs={"height": 120, "width": 160})
    assert server.tunnelled and "tunnel=True" in server.route
    assert server.remote_address.startswith("tcp://127.0.0.1:") and server.data_port > 0
    local = CameraEnv(height=120, width=160)
    with FastRemoteEnv(server.address, transport="tcp", timeout=15) as env:
        assert f"dedicated connection to port {server.data_port}" in env.transport_reason
        obs, _ = env.reset(seed=3)
        expected, _ = local.reset(seed=3)
        assert np.array_equal(obs["left"], expected["left"]) and obs["right"].dtype == np.uint8
        for _ in range(3):
            action = np.zeros(local.action_space.shape, dtype=np.float32)
            got, want = env.step(action), local.step(action)
            assert np.array_equal(got[0]["proprio"], want[0]["proprio"]) and got[1] == want[1]
    # both connections came in through the tunnel's listeners
    host = host_of(server.address)
    assert server.forwarder is not None
    assert server.forwarder.accepted[(host, server.data_port)] >= 1
    assert server.forwarder.accepted[(host, int(server.address.rsplit(":", 1)[1]))] >= 1


def test_auto_connects_directly_when_the_port_answers_and_logs(launched) -> None:
    server = launched()  # tunnel="auto"; the SSH host is this machine's loopback
    assert not server.tunnelled and server.forwarder is None
    assert server.route.startswith("auto:") and "answers" in server.route
    assert server.address == server.remote_address
    with FastRemoteEnv(server.address, transport="tcp", timeout=10) as env:
        obs, _ = env.reset(seed=1)
        assert np.array_equal(obs, VectorEnv().reset(seed=1)[0])
        assert "dedicated connection" in env.transport_reason
    # logs() and alive()
    assert server.alive()
    logs = server.logs()
    assert "fastenv: serving fastenv.examples:VectorEnv" in logs and f"fastenv: ready {server.remote_address}" in logs
    assert server.logs(1) == f"fastenv: ready {server.remote_address}"
    assert Path(server.log_path).read_text().splitlines()[-1] == server.logs(1)
    assert server.stop() == 0
    assert not server.alive() and "fastenv: stopped" in server.logs(3)
    assert server.stop() == 0  # idempotent


def test_proxyjump_tunnels_through_the_jump_host(launched) -> None:
    server = launched(host="behind-jump")  # ProxyJump simbox: the same sshd as jump host
    assert server.tunnelled and "SSH connection" in server.route
    with FastRemoteEnv(server.address, transport="tcp", timeout=10) as env:
        assert env.reset(seed=2)[0].shape == (4,)
        assert "dedicated connection" in env.transport_reason


def test_insecure_binds_the_interface_ssh_came_in_on(launched) -> None:
    # Through the jump host sshd sees the connection arrive on 127.0.0.1, so that is
    # the interface the server binds; the probe then finds it reachable from here.
    server = launched(host="behind-jump", insecure=True)
    assert not server.tunnelled and "answers" in server.route
    assert "without authentication (--insecure)" in server.logs()
    with FastRemoteEnv(server.address, timeout=10) as env:
        env.reset(seed=0)


def test_launch_and_connect_close_stops_the_server(sshd, state_dir) -> None:
    options = _without_timeout(sshd, state_dir)
    env = launch_and_connect("simbox", VECTOR, tunnel=True, transport="tcp", timeout=10, start_timeout=30, **options)
    server = env.launched
    assert isinstance(server, LaunchedServer) and server.alive()
    with env:
        obs, _ = env.reset(seed=4)
        assert np.array_equal(obs, VectorEnv().reset(seed=4)[0])
        env.step(np.zeros(4, dtype=np.float32))
    assert gone(server.remote_pid) and not server.alive() and server.exit_code == 0
    env.close()  # idempotent


def test_launch_and_connect_as_a_context_manager(sshd, state_dir) -> None:
    options = _without_timeout(sshd, state_dir)
    with launch_and_connect("simbox", VECTOR, tunnel=True, transport="tcp", timeout=10, start_timeout=30, **options) as env:
        server = env.launched
        assert server.alive()
        env.reset(seed=1)
    assert gone(server.remote_pid)


def _without_timeout(sshd: SSHServer, state_dir: Path) -> dict[str, Any]:
    return {k: v for k, v in launch_defaults(sshd, state_dir).items() if k != "timeout"}


# ---------------------------------------------------------------- SSH: hosts, keys, config


def test_unknown_host_is_refused_unless_accepted(sshd, launched, tmp_path) -> None:
    known_hosts = tmp_path / "empty_known_hosts"
    empty_config = tmp_path / "ssh_config"
    empty_config.write_text("")
    spec = f"{sshd.user}@127.0.0.1:{sshd.port}"
    options = {"identity": sshd.user_key, "known_hosts": known_hosts, "ssh_config": empty_config}
    with pytest.raises(HostKeyError, match="not a known host") as caught:
        launched(host=spec, **options)
    assert "SHA256:" in str(caught.value) and isinstance(caught.value, ConnectionError)
    assert not known_hosts.exists()

    server = launched(host=spec, accept_unknown_host=True, **options)
    assert server.alive()
    assert known_hosts.read_text() == sshd.host_line + "\n"  # recorded, like StrictHostKeyChecking=accept-new
    destination = resolve_destination(spec, load_ssh_config(empty_config), identity=sshd.user_key)
    with open_connection(destination, known_hosts=known_hosts) as connection:  # now known: no flag needed
        assert connection.active


def test_changed_host_key_is_refused(sshd, tmp_path) -> None:
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.user_key))  # any key but the host's
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        launch(
            f"127.0.0.1:{sshd.port}",
            VECTOR,
            identity=sshd.user_key,
            known_hosts=known_hosts,
            accept_unknown_host=True,  # never overrides a mismatch
            ssh_config=sshd.config,
            connect_timeout=10,
        )


def test_wrong_key_is_an_authentication_error(sshd, tmp_path) -> None:
    stranger = tmp_path / "stranger"
    write_key(stranger)
    config = tmp_path / "ssh_config"
    config.write_text("")
    with pytest.raises(SSHConnectError, match="authentication") as caught:
        launch(
            f"127.0.0.1:{sshd.port}",
            VECTOR,
            identity=stranger,
            known_hosts=sshd.known_hosts,
            ssh_config=config,
            connect_timeout=10,
        )
    assert not isinstance(caught.value, HostKeyError)


def test_ssh_config_alias_resolves_like_ssh(sshd, tmp_path) -> None:
    config = load_ssh_config(sshd.config)
    simbox = resolve_destination("simbox", config)
    assert (simbox.hostname, simbox.port, simbox.user) == ("127.0.0.1", sshd.port, sshd.user)
    assert simbox.identity_files == (str(sshd.user_key),)
    assert not simbox.look_for_keys and not simbox.allow_agent  # IdentitiesOnly yes
    assert simbox.known_hosts_files == (str(sshd.known_hosts),)
    override = resolve_destination("alice@simbox:2200", config)  # the spec wins over the config
    assert (override.user, override.port) == ("alice", 2200)
    jumped = resolve_destination("behind-jump", config)
    assert [hop.alias for hop in jumped.hops()] == ["simbox", "behind-jump"]
    loop = tmp_path / "loop_config"
    loop.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(LaunchError, match="ProxyJump loop"):
        resolve_destination("a", load_ssh_config(loop))


def test_proxy_command_is_used_as_the_socket(sshd, tmp_path) -> None:
    relay = tmp_path / "relay.py"
    relay.write_text(
        "import socket, sys, threading\n"
        "sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
        "def up():\n"
        "    while data := sys.stdin.buffer.read1(65536):\n"
        "        sock.sendall(data)\n"
        "    sock.shutdown(socket.SHUT_WR)\n"
        "threading.Thread(target=up, daemon=True).start()\n"
        "while data := sock.recv(65536):\n"
        "    sys.stdout.buffer.write(data)\n"
        "    sys.stdout.buffer.flush()\n"
    )
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host relayed\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.user_key}\n  ProxyCommand {sys.executable} {relay} %h %p\n"
    )
    destination = resolve_destination("relayed", load_ssh_config(config))
    assert destination.proxy_command is not None
    with open_connection(destination, known_hosts=sshd.known_hosts, connect_timeout=10) as connection:
        assert connection.direct_peer is None  # never probed directly: the host may be unreachable from here
        channel = connection.run("echo through-the-relay", 10)
        with channel:
            assert channel.makefile("rb").read().strip() == b"through-the-relay"


def test_tunnel_without_a_free_data_port_still_forwards_control(sshd, tmp_path) -> None:
    from fastenv.launch.launcher import _LOCAL_HOSTS, _open_tunnel

    destination = resolve_destination("simbox", load_ssh_config(sshd.config))
    with contextlib.ExitStack() as stack:
        taken = stack.enter_context(socket.socket())
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for host in _LOCAL_HOSTS[1:]:
            other = stack.enter_context(socket.socket())
            other.bind((host, port))
            other.listen(1)
        connection = stack.enter_context(open_connection(destination, connect_timeout=10))
        forwarder, address, note = _open_tunnel(connection, "127.0.0.1", sshd.port, port, 0)
        with forwarder:
            assert address.startswith("tcp://127.0.0.1:") and "is not forwarded" in note
            # the control forward works: here it leads to the sshd itself, which greets first
            with socket.create_connection(tuple(address.removeprefix("tcp://").rsplit(":", 1)), timeout=10) as sock:
                sock.settimeout(10)
                assert sock.recv(64).startswith(b"SSH-2.0-")


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("host", (None, "host", None)),
        ("bob@host", ("bob", "host", None)),
        ("bob@host:2222", ("bob", "host", 2222)),
        ("ssh://bob@10.0.0.1:22", ("bob", "10.0.0.1", 22)),
        ("[::1]:2222", (None, "::1", 2222)),
        ("bob@[fe80::1]", ("bob", "fe80::1", None)),
        ("fe80::1", (None, "fe80::1", None)),
    ],
)
def test_parse_host_spec(spec: str, parsed: tuple) -> None:
    assert parse_host_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["", "host:port", "bob@", "[::1"])
def test_parse_host_spec_refuses_garbage(spec: str) -> None:
    with pytest.raises(LaunchError, match="invalid SSH host"):
        parse_host_spec(spec)


def test_route_plan() -> None:
    assert _plan_route("yes", "10.0.0.5", False, True) == ("127.0.0.1", "tunnel")
    assert _plan_route("auto", "127.0.0.1", False, "auto") == ("127.0.0.1", "probe")
    assert _plan_route("no", "127.0.0.1", False, False) == ("127.0.0.1", "direct")
    assert _plan_route("auto", "10.0.0.5", False, "auto") == ("127.0.0.1", "tunnel-safe")
    assert _plan_route("auto", "10.0.0.5", True, "auto") == (None, "probe")
    assert _plan_route("no", None, True, False) == (None, "direct")
    with pytest.raises(LaunchError, match="insecure=True"):
        _plan_route("no", "10.0.0.5", False, False)


def test_remote_command_quotes_everything_but_setup() -> None:
    command = remote_command(
        python="~/venv/bin/python",
        launch_id="x",
        serve_args=["my env.py:make", "--env-kwargs", '{"a": "b c"}'],
        grace=2,
        setup="source venv/bin/activate",
        cwd="~/sim dir",
        env={"CUDA_VISIBLE_DEVICES": "0; rm -rf /"},
    )
    assert "export CUDA_VISIBLE_DEVICES='0; rm -rf /'" in command
    assert "cd \"$HOME\"/'sim dir' || exit 97" in command
    assert "{\nsource venv/bin/activate\n}" in command
    assert 'exec "$HOME"/venv/bin/python -m fastenv.launch.remote run' in command
    assert "'my env.py:make'" in command and '\'{"a": "b c"}\'' in command
    assert shell_path("/plain/path") == "/plain/path"
    with pytest.raises(ValueError, match="variable name"):
        remote_command(python="python", launch_id="x", serve_args=[], grace=1, env={"A B": "1"})


# ---------------------------------------------------------------- failures, at once, with the remote output


def test_bad_target_fails_at_once_with_the_remote_error(launched) -> None:
    started = time.monotonic()
    with pytest.raises(LaunchError, match="exited with code 2 before it was ready") as caught:
        launched("no_such_module_xyz:make_env")
    assert time.monotonic() - started < 20
    assert not isinstance(caught.value, LaunchTimeout)
    assert "cannot import 'no_such_module_xyz'" in str(caught.value)
    assert "remote output" in str(caught.value) and "no_such_module_xyz" in caught.value.output


def test_missing_python_fails_at_once(launched) -> None:
    with pytest.raises(LaunchError, match="was not found") as caught:
        launched(python="/nonexistent/bin/python3")
    assert caught.value.exit_status == 127
    assert "/nonexistent/bin/python3" in caught.value.output


def test_busy_port_fails_at_once(launched) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(LaunchError, match="in use"):
            launched(port=port)


def test_failing_setup_fails_at_once(launched) -> None:
    with pytest.raises(LaunchError, match="setup command failed") as caught:
        launched(setup="echo preparing; false")
    assert "preparing" in caught.value.output


def test_slow_start_times_out_and_the_server_is_stopped(launched, tmp_path) -> None:
    (tmp_path / "slow_env.py").write_text("import time\nclass Slow:\n    def __init__(self):\n        time.sleep(60)\n")
    with pytest.raises(LaunchTimeout, match="did not print its ready line within 2s") as caught:
        launched(f"{tmp_path / 'slow_env.py'}:Slow", timeout=2.0, grace=1.0)  # it sleeps through SIGTERM
    match = re.search(r"remote pid (\d+)", str(caught.value))
    assert match is not None, str(caught.value)
    assert gone(int(match.group(1)))  # the launcher closed the connection; the agent ended the server


def test_setup_cwd_and_env_reach_the_server(launched, tmp_path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    (workdir / "probe_env.py").write_text(
        "import os\n"
        "class Probe:\n"
        "    def reset(self, **kwargs):\n"
        "        return 0, {}\n"
        "    def step(self, action):\n"
        "        return 0, 0.0, False, False, {}\n"
        "    def get_state(self):\n"
        "        keys = ('FASTENV_SETUP', 'FASTENV_VAR')\n"
        "        return {'cwd': os.getcwd(), **{k: os.environ.get(k) for k in keys}}\n"
    )
    server = launched(
        "probe_env.py:Probe",
        cwd=str(workdir),
        setup="export FASTENV_SETUP=done",
        env={"FASTENV_VAR": "it's a $HOME `x`"},
    )
    with FastRemoteEnv(server.address, timeout=10) as env:
        state = env.get_state()
    assert state == {"cwd": str(workdir), "FASTENV_SETUP": "done", "FASTENV_VAR": "it's a $HOME `x`"}


# ---------------------------------------------------------------- lifetime: stop, logs, cleanup, lifeline


def test_stop_ends_the_whole_process_group(launched) -> None:
    server = launched(SPAWNING, env_kwargs={"ignore_term": True}, tunnel=True)
    with FastRemoteEnv(server.address, timeout=10) as env:
        pids = env.get_state()
    assert pids["server_pid"] == server.remote_pid
    child = psutil.Process(pids["child_pid"])
    assert os.getpgid(child.pid) == server.remote_pid  # the child is in the server's group
    server.stop(timeout=1.0)  # the child ignores SIGTERM: only the SIGKILL after 1 s ends it
    assert gone(server.remote_pid, 0.1) and gone(child.pid, 0.1)
    assert not server.alive()
    assert not Path(server.pid_file).exists()


def test_cleanup_old_stops_earlier_servers_and_never_a_reused_pid(launched, state_dir) -> None:
    first = launched()
    reused = state_dir / "reused.json"  # a record whose pid now belongs to another process: this test's
    reused.write_text(json.dumps({"id": "reused", "pid": os.getpid(), "create_time": 1.0, "cmdline": ["python"]}))
    second = launched(cleanup_old=True)
    assert second.cleaned_up == (first.remote_pid,)
    assert first.wait(timeout=15) is not None and not first.alive()
    assert gone(first.remote_pid)
    assert not reused.exists() and psutil.pid_exists(os.getpid())
    assert Path(second.pid_file).exists() and second.alive()


def test_unstopped_server_warns_and_ends_with_the_connection(sshd, state_dir) -> None:
    server = launch("simbox", VECTOR, **launch_defaults(sshd, state_dir))
    pid = server.remote_pid
    with pytest.warns(ResourceWarning, match="was not stopped"):
        del server
        gc.collect()
    assert gone(pid)  # the remote agent saw the SSH channel close and ended the server


# ---------------------------------------------------------------- CLI, compat, example


def _cli(sshd: SSHServer, state_dir: Path) -> ServerProcess:
    command = [
        sys.executable, "-m", "fastenv", "launch", "simbox", VECTOR,
        "--python", sys.executable, "--ssh-config", str(sshd.config), "--state-dir", str(state_dir),
        "--tunnel", "yes",
    ]  # fmt: skip
    return ServerProcess("", command=command, ready_timeout=30)


def _remote_pid(cli: ServerProcess) -> int:
    assert cli.wait_for_output("remote pid", timeout=10), cli.output()
    match = re.search(r"remote pid (\d+)", cli.output())
    assert match is not None
    return int(match.group(1))


def test_cli_launch_until_ctrl_c(sshd, state_dir) -> None:
    cli = _cli(sshd, state_dir)
    try:
        address = cli.start()
        pid = _remote_pid(cli)
        with FastRemoteEnv(address, transport="tcp", timeout=10) as env:
            assert env.reset(seed=0)[0].shape == (4,)
            assert "dedicated connection" in env.transport_reason
        assert cli.process is not None
        cli.process.send_signal(signal.SIGINT)
        assert cli.process.wait(timeout=30) == 0
        assert gone(pid)
        assert cli.wait_for_output("fastenv: stopped", timeout=5)
    finally:
        cli.stop()


def test_cli_killed_leaves_nothing_running(sshd, state_dir) -> None:
    cli = _cli(sshd, state_dir)
    try:
        cli.start()
        pid = _remote_pid(cli)
        cli.kill()  # SIGKILL: no clean-up on this side at all
        assert gone(pid)  # the agent saw its SSH channel close
    finally:
        cli.stop()


def _seed_example() -> Any:
    spec = importlib.util.spec_from_file_location("seed_example", EXAMPLES / "seed_example.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compat_auto_start_remote_server(sshd, state_dir, capsys) -> None:
    create_local_env = _seed_example().create_local_env
    env = RemoteEnv("localhost", 8888)
    options = {**launch_defaults(sshd, state_dir), "tunnel": True}
    assert env.auto_start_remote_server("simbox", str(EXAMPLES), "walk", 1, script="seed_example.py", **options)
    assert env.launched is not None and (env.host, env.port) != ("localhost", 8888)
    pid = env.launched.remote_pid
    try:
        assert env.connect()
        local = create_local_env("walk", 1)
        assert np.array_equal(env.reset(), local.reset())
        obs, reward, done, info = env.step([0.1])
        assert np.array_equal(obs, local.step([0.1])[0]) and info == {"steps": 1}
    finally:
        env.close()
    assert gone(pid) and env.launched is None
    assert "Remote server ready on simbox" in capsys.readouterr().out

    assert not env.auto_start_remote_server("simbox", str(state_dir), "walk", **options)  # no example.py there
    assert "no such file" in capsys.readouterr().out


def test_compat_function_accepts_the_script_path(sshd, state_dir) -> None:
    create_local_env = _seed_example().create_local_env
    options = launch_defaults(sshd, state_dir)
    with auto_start_remote_server("simbox", str(EXAMPLES / "seed_example.py"), "reach", 2, **options) as server:
        with FastRemoteEnv(server.address, timeout=10) as env:
            local = create_local_env("reach", 2)
            assert np.array_equal(env.reset(), local.reset()) and env.max_steps == local.max_steps == 100


def test_seed_example_auto_start_remote(sshd, state_dir) -> None:
    command = [
        sys.executable, str(EXAMPLES / "seed_example.py"), "--auto_start_remote", "--remote_host", "simbox",
        "--task", "walk", "--steps", "3", "--python", sys.executable, "--ssh_config", str(sshd.config),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Remote server ready on simbox" in result.stdout and "Step 2:" in result.stdout


def test_seed_example_server_mode() -> None:
    command = [sys.executable, str(EXAMPLES / "seed_example.py"), "server", "--port", "0"]
    with ServerProcess("", command=command) as server:
        host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
        with RemoteEnv(host, int(port)) as env:
            assert env.connect() and env.reset().shape == (2,)
