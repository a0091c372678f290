"""CURVE authentication, encryption, key files and trusted mode, against real `fastenv serve` processes."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import fastenv
from fastenv import protocol
from fastenv.control.auth import AuthConfig, keygen
from fastenv.errors import (
    AuthenticationRequired,
    ClientKeyRefused,
    FastEnvTimeout,
    KeyFileError,
    ServerConfigError,
    ServerKeyMismatch,
    TrustedModeError,
)
from fastenv.observe import TransitionSubscriber
from fastenv.protocol import Kind
from fastenv.trusted import load_factory
from tests.proxy import TcpProxy

TARGET = "fastenv.examples:VectorEnv"
T = 20.0  # bound on every blocking call
FAIL_FAST_S = 5.0  # a refused client must know within this, well before its connect timeout


class _TouchingFactory:
    """A "factory" whose unpickling runs a shell command: it must never be loaded outside trusted mode."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self) -> None:
        raise AssertionError("never called")

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    keygen(directory)
    return directory


@pytest.fixture
def other_keys(tmp_path: Path) -> Path:
    directory = tmp_path / "other"
    keygen(directory)
    return directory


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastenv", *args], capture_output=True, text=True, timeout=60, check=False)


def _refused(address: str, **kwargs) -> tuple[type[BaseException], str, float]:
    start = time.monotonic()
    with pytest.raises(fastenv.AuthenticationError) as caught:
        fastenv.FastRemoteEnv(address, connect_timeout=T, **kwargs)
    return type(caught.value), str(caught.value), time.monotonic() - start


# ---------------------------------------------------------------- key files


def test_keygen_writes_the_documented_layout(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    result = run_cli("keygen", str(directory))
    assert result.returncode == 0, result.stderr
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "authorized_clients/client.key"):
        assert (directory / name).is_file(), name
    for secret in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((directory / secret).stat().st_mode) == 0o600
    assert (directory / "client.key").read_bytes() == (directory / "authorized_clients" / "client.key").read_bytes()
    server, client = AuthConfig.for_server(directory), AuthConfig.for_client(directory)
    assert client.server_key == server.public_key
    assert server.authorized_clients == {client.public_key}
    assert "secret" not in repr(client) and client.secret_key.decode() not in repr(client)

    again = run_cli("keygen", str(directory))  # never overwrites a key
    assert again.returncode == 2 and "already exists" in again.stderr
    named = run_cli("keygen", str(directory), "--name", "alice")
    assert named.returncode == 0, named.stderr
    assert (directory / "authorized_clients" / "alice.key").is_file()
    assert len(AuthConfig.for_server(directory).authorized_clients) == 2


def test_bad_key_directories_are_typed_errors(tmp_path: Path, keys: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        AuthConfig.for_client(tmp_path / "missing")
    (keys / "public_only.key_secret").write_bytes((keys / "client.key").read_bytes())
    with pytest.raises(KeyFileError, match="holds no secret key"):
        AuthConfig.for_client(keys, name="public_only")
    (keys / "authorized_clients" / "client.key").unlink()
    with pytest.raises(KeyFileError, match="no client public keys"):
        AuthConfig.for_server(keys)
    (keys / "broken.key_secret").write_text('curve\n    public-key = "short"\n    secret-key = "short"\n')
    with pytest.raises(KeyFileError, match="invalid CURVE"):
        AuthConfig.for_client(keys, name="broken")


def test_serve_refuses_missing_keys_and_trusted_mode_without_auth(tmp_path: Path) -> None:
    missing = run_cli("serve", TARGET, "--auth", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    trusted = run_cli("serve", TARGET, "--allow-trusted")
    assert trusted.returncode == 2 and "needs authentication (--auth DIR)" in trusted.stderr
    with pytest.raises(ServerConfigError, match="--auth"):
        fastenv.EnvServer(factory=dict, allow_trusted=True)


# ---------------------------------------------------------------- who gets in


def test_authenticated_client_works_on_every_transport(serve, keys: Path) -> None:
    server = serve(TARGET, "--auth", str(keys))
    assert server.wait_for_output("CURVE authentication on (1 authorized client key(s))"), server.output()
    assert "no raw data stream" in server.output()
    with fastenv.FastRemoteEnv(server.address, auth=keys, timeout=T) as env:
        assert env.transport == "shm"
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,)
    with fastenv.FastRemoteEnv(server.address, auth=str(keys), transport="tcp", timeout=T) as env:
        assert "CURVE-encrypted ZeroMQ connection" in env.transport_reason
        first, _ = env.reset(seed=0)
        np.testing.assert_array_equal(first, obs)
        env.step(np.zeros(4, np.float32))


def test_unauthenticated_client_is_refused_and_told_why(serve, keys: Path) -> None:
    server = serve(TARGET, "--auth", str(keys))
    kind, message, elapsed = _refused(server.address)
    assert kind is AuthenticationRequired and "requires authentication" in message
    assert elapsed < FAIL_FAST_S


def test_wrong_client_key_is_refused_and_told_why(serve, keys: Path, other_keys: Path) -> None:
    server = serve(TARGET, "--auth", str(keys))
    intruder = AuthConfig.for_client(other_keys)
    pinned = AuthConfig(intruder.public_key, intruder.secret_key, server_key=AuthConfig.for_client(keys).server_key)
    kind, message, elapsed = _refused(server.address, auth=pinned)
    assert kind is ClientKeyRefused and "refused this client's key" in message
    assert elapsed < FAIL_FAST_S
    assert server.wait_for_output("is not authorized"), server.output()  # the server logs who it refused
    with fastenv.FastRemoteEnv(server.address, auth=keys, timeout=T) as env:  # the right key still gets in
        env.reset(seed=0)


def test_wrong_server_key_is_refused_and_told_why(serve, keys: Path, other_keys: Path) -> None:
    server = serve(TARGET, "--auth", str(keys))
    client = AuthConfig.for_client(keys)
    impostor_pin = AuthConfig(
        client.public_key, client.secret_key, server_key=AuthConfig.for_client(other_keys).server_key
    )
    kind, message, elapsed = _refused(server.address, auth=impostor_pin)
    assert kind is ServerKeyMismatch and "does not hold the secret key of the pinned server key" in message
    assert elapsed < FAIL_FAST_S


def test_client_with_keys_refuses_a_server_without_auth(serve, keys: Path) -> None:
    server = serve(TARGET)
    kind, message, elapsed = _refused(server.address, auth=keys)
    assert kind is ServerKeyMismatch and "does not use authentication" in message
    assert elapsed < FAIL_FAST_S


def test_traffic_is_encrypted(serve, keys: Path) -> None:
    server = serve(TARGET, "--auth", str(keys))
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    marker = "plaintext-marker-0123456789"
    with TcpProxy(("127.0.0.1", 0), (host, int(port)), record=True) as proxy:
        address = f"{proxy.address[0]}:{proxy.address[1]}"
        with fastenv.FastRemoteEnv(address, auth=keys, transport="tcp", timeout=T) as env:
            env.reset(seed=0, options={"note": marker})
            state = env.get_state()
            assert state["steps"] == 0
        recorded = bytes(proxy.recorded or b"")
    assert b"CURVE" in recorded  # the (plaintext) ZMTP greeting names the mechanism
    for plaintext in (marker.encode(), b"get_state", b"boot_id", b"hostname"):
        assert plaintext not in recorded


def test_observers_subscribe_over_curve(serve, keys: Path) -> None:
    server = serve(TARGET, "--auth", str(keys))
    with (
        fastenv.FastRemoteEnv(server.address, auth=keys, role="observer", timeout=T) as observer,
        fastenv.FastRemoteEnv(server.address, auth=keys, timeout=T) as driver,
    ):
        driver.reset(seed=1)
        transition = observer.next_transition(timeout=T)
        assert transition.method == "reset" and transition.kwargs == {"seed": 1}
        port = observer._session.welcome["observe"]["port"]
        with pytest.raises(FastEnvTimeout):  # a subscriber without keys hears nothing
            TransitionSubscriber(f"tcp://127.0.0.1:{port}", timeout=0.5)


def test_non_loopback_bind_is_allowed_with_auth_and_does_not_warn(serve, keys: Path) -> None:
    server = serve(TARGET, "--bind", "0.0.0.0", "--auth", str(keys))
    port = server.address.rsplit(":", 1)[1]
    with fastenv.FastRemoteEnv(f"127.0.0.1:{port}", auth=keys, timeout=T) as env:
        env.reset(seed=0)
    assert "without authentication" not in server.output()


# ---------------------------------------------------------------- trusted mode


def test_trusted_mode_runs_a_factory_defined_in_the_client(serve, keys: Path) -> None:
    server = serve(TARGET, "--auth", str(keys), "--allow-trusted")
    offset = 41.0  # captured by the closure: only a by-value pickle carries it

    class NotebookEnv:
        def reset(self, *, seed=None, options=None):
            return np.full(3, offset), {"made_by": "a closure"}

        def step(self, action):
            return np.full(3, offset + action), 1.0, False, False, {}

    with (
        fastenv.FastRemoteEnv(server.address, auth=keys, role="observer", timeout=T) as observer,
        fastenv.FastRemoteEnv.create(lambda: NotebookEnv(), server.address, auth=keys, timeout=T) as env,
    ):
        assert env.server_info["trusted"] is True
        obs, info = env.reset()
        np.testing.assert_array_equal(obs, np.full(3, 41.0))
        assert info == {"made_by": "a closure"}
        assert env.step(1.0)[0][0] == 42.0
        with fastenv.FastRemoteEnv(server.address, auth=keys, timeout=T) as plain:  # others get the served env
            assert plain.reset(seed=0)[0].shape == (4,)
        # observers watch the served env only: the shipped env's calls were never published
        first = observer.next_transition(timeout=T)
        assert first.method == "reset" and first.kwargs == {"seed": 0}
    assert server.wait_for_output("(trusted mode)"), server.output()


def test_trusted_mode_is_refused_without_allow_trusted_and_nothing_is_loaded(serve, keys: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    server = serve(TARGET, "--auth", str(keys))
    with pytest.raises(TrustedModeError, match="does not allow trusted mode"):
        fastenv.FastRemoteEnv.create(_TouchingFactory(marker), server.address, auth=keys, timeout=T)
    assert not marker.exists()
    with fastenv.FastRemoteEnv(server.address, auth=keys, timeout=T) as env:
        env.reset(seed=0)


def test_trusted_mode_needs_an_authenticated_connection(serve, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(TrustedModeError, match="authenticated connection"):  # refused before connecting
        fastenv.FastRemoteEnv.create(_TouchingFactory(marker), "127.0.0.1:1", auth=None)
    payload = pickle.dumps(_TouchingFactory(marker))
    with pytest.raises(TrustedModeError, match="authenticated connection"):
        load_factory(payload, allowed=True, user_id=None)
    server = serve(TARGET)  # no auth: a raw client ships a payload anyway
    with zmq.Context.instance().socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(T * 1000))
        sock.connect(server.address)
        sock.send_multipart(protocol.pack(Kind.HELLO, 1, {"fastenv": "x", "factory": payload}))
        reply = protocol.unpack(sock.recv_multipart())
    assert reply.kind is Kind.ERROR
    body = reply.body()
    assert body["kind"] == "trusted" and "does not allow trusted mode" in body["message"]
    assert not marker.exists()


def test_a_curve_socket_without_its_zap_handler_lets_nobody_in(keys: Path) -> None:
    """Fail closed: libzmq alone would accept any client key; fastenv's sockets demand the handler."""
    with zmq.Context() as context, context.socket(zmq.ROUTER) as router:
        router.setsockopt(zmq.LINGER, 0)
        AuthConfig.for_server(keys).configure_server(router)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        with pytest.raises(fastenv.AuthenticationError):
            fastenv.FastRemoteEnv(f"127.0.0.1:{port}", auth=keys, connect_timeout=T)
        assert not router.poll(100)  # not a single message got through
