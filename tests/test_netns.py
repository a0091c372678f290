"""Automatic transport selection against a server on another (namespaced) host.

The fixture makes a test host: a network namespace joined to this one by a
veth pair (addresses in 10.213.x.0/30, private to this machine), and a mount
namespace whose /dev/shm is a fresh tmpfs. A server there is another host as
far as fastenv can tell: the client must pick TCP by itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

import fastenv
from fastenv.errors import TransportError
from fastenv.examples import VectorEnv
from fastenv.server_process import ServerProcess

from assertions import assert_same


@dataclass
class NamespacedHost:
    namespace: str
    address: str  # the namespace's IP, reachable from here


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@pytest.fixture
def test_host() -> Iterator[NamespacedHost]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("needs root with `ip` and `unshare` to create a network namespace")
    tag = f"{os.getpid() % 50000}"
    namespace, host_end, ns_end = f"fastenv-t{tag}", f"fe{tag}h", f"fe{tag}n"
    octet = os.getpid() % 250 + 1
    host_ip, ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    try:
        _run("ip", "netns", "add", namespace)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"this machine forbids network namespaces: {exc.stderr.decode().strip()}")
    try:
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _run("ip", "link", "set", ns_end, "netns", namespace)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_end)
        _run("ip", "link", "set", host_end, "up")
        _run("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_end)
        _run("ip", "netns", "exec", namespace, "ip", "link", "set", ns_end, "up")
        _run("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield NamespacedHost(namespace, ns_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


def _serve_on(host: NamespacedHost, target: str) -> ServerProcess:
    serve = (
        f"mount -t tmpfs tmpfs /dev/shm && exec {sys.executable} -m fastenv serve {target} "
        f"--bind {host.address} --port 0 --insecure"
    )
    command = ["ip", "netns", "exec", host.namespace, "unshare", "--mount", "--propagation", "private", "sh", "-c", serve]
    server = ServerProcess(target, command=command)
    server.start()
    return server


def test_auto_picks_tcp_for_a_server_on_another_host(test_host: NamespacedHost) -> None:
    server = _serve_on(test_host, "fastenv.examples:VectorEnv")
    try:
        assert server.address.startswith(f"tcp://{test_host.address}:")
        local = VectorEnv()
        with fastenv.FastRemoteEnv(server.address, timeout=30) as remote:
            assert remote.transport == "tcp"
            assert "probe failed" in remote.transport_reason
            assert "dedicated connection" in remote.transport_reason  # the chunked stream, not ZeroMQ frames
            assert_same(remote.reset(seed=3), local.reset(seed=3))
            for i in range(50):
                action = np.full(4, np.cos(i), dtype=np.float32)
                assert_same(remote.step(action), local.step(action))
        with pytest.raises(TransportError, match="probe failed"):
            fastenv.FastRemoteEnv(server.address, transport="shm", timeout=30)
    finally:
        server.stop()


def test_same_machine_still_picks_shm(serve) -> None:
    server = serve("fastenv.examples:VectorEnv")
    with fastenv.FastRemoteEnv(server.address) as env:
        assert env.transport == "shm"
