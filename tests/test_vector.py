"""Vector envs: VectorHost in-process and FastVectorEnv over real `fastenv serve --num-envs` servers,
both checked against gymnasium.vector.SyncVectorEnv seed for seed, autoreset included."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import fastenv
from fastenv.errors import (
    AlreadyPendingError,
    ClientClosedError,
    FastEnvTimeout,
    IncompatibleEnvsError,
    NoPendingCallError,
    RemoteEnvError,
    ServerConfigError,
    UnknownMethodError,
)
from fastenv.examples import StructuredEnv
from fastenv.server_process import ServerProcess
from fastenv.vector import FastVectorEnv, VectorHost

from assertions import same

NESTED = f"{Path(__file__).parent / 'envs' / 'vector_envs.py'}:NestedEnv"
STEPS = 300


def _nested_env(**kwargs: Any) -> Any:
    from envs.vector_envs import NestedEnv

    return NestedEnv(**kwargs)


def run_against_sync(vector: Any, sync: SyncVectorEnv, steps: int, seed: int = 5) -> int:
    """Reset both with ``seed``, step both with the same random actions; returns how many episodes ended."""
    same(vector.reset(seed=seed), sync.reset(seed=seed))
    sampler = sync.action_space
    sampler.seed(seed)
    ended = 0
    for _ in range(steps):
        actions = sampler.sample()
        expected = sync.step(actions)
        same(vector.step(actions), expected)
        ended += int(expected[2].sum() + expected[3].sum())
    return ended


@contextlib.contextmanager
def servers(target: str, *counts: int, env_kwargs: dict[str, Any] | None = None) -> Iterator[list[str]]:
    """Start one `fastenv serve TARGET --num-envs N` per count (0: a plain server); yield the addresses."""
    with contextlib.ExitStack() as stack:
        addresses = []
        for count in counts:
            args = ["--mode", "per-client"] + (["--num-envs", str(count)] if count else [])
            addresses.append(stack.enter_context(ServerProcess(target, args, env_kwargs=env_kwargs)).address)
        yield addresses


@pytest.fixture(scope="module")
def cartpole_pair() -> Iterator[list[str]]:
    """Two CartPole-v1 servers with 4 envs each (per-client: every connection gets fresh envs)."""
    with servers("CartPole-v1", 4, 4) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def nested_pair() -> Iterator[list[str]]:
    """Two NestedEnv servers with 2 and 3 envs (uneven on purpose)."""
    with servers(NESTED, 2, 3) as addresses:
        yield addresses


def cartpole_sync(n: int) -> SyncVectorEnv:
    return SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * n)


# --------------------------------------------------------------------------- VectorHost, in-process


@pytest.mark.parametrize(
    "make, n, steps",
    [
        (lambda: gymnasium.make("CartPole-v1"), 5, STEPS),
        (StructuredEnv, 3, 120),
        (_nested_env, 4, 120),
    ],
    ids=["cartpole", "structured", "nested"],
)
def test_host_matches_sync_vector_env(make: Callable[[], Any], n: int, steps: int) -> None:
    with VectorHost([make() for _ in range(n)]) as host:
        sync = SyncVectorEnv([make] * n)
        assert host.num_envs == n
        assert host.observation_space == sync.observation_space
        assert host.action_space == sync.action_space
        assert host.single_observation_space == sync.single_observation_space
        assert host.metadata == sync.metadata
        assert host.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP

        class Merged:  # the host's list infos, merged as the client merges them
            def reset(self, **kwargs: Any) -> Any:
                obs, infos = host.reset(**kwargs)
                return _copy(obs), merge(infos)

            def step(self, actions: Any) -> Any:
                *arrays, infos = host.step(actions)
                return (_copy(arrays[0]), *arrays[1:], merge(infos))

        def merge(infos: list[dict]) -> dict:
            merged: dict = {}
            for index, info in enumerate(infos):
                merged = sync._add_info(merged, info, index)
            return merged

        assert run_against_sync(Merged(), sync, steps) > 0
        sync.close()


def _copy(batch: Any) -> Any:
    if isinstance(batch, np.ndarray):
        return batch.copy()
    if isinstance(batch, dict):
        return {key: _copy(value) for key, value in batch.items()}
    return tuple(_copy(value) for value in batch)


def test_host_seeds_reset_mask_and_buffer() -> None:
    make = lambda: gymnasium.make("CartPole-v1")
    with VectorHost([make() for _ in range(4)]) as host:
        sync = SyncVectorEnv([make] * 4)
        obs, infos = host.reset(seed=[3, None, 4, 9])
        assert infos == [{}, {}, {}, {}]
        expected, _ = sync.reset(seed=[3, None, 4, 9])
        assert np.array_equal(obs[[0, 2, 3]], expected[[0, 2, 3]])
        first = host.step(np.ones(4, np.int64))[0]
        assert first is host.step(np.ones(4, np.int64))[0]  # one batch buffer, written in place
        mask = np.array([False, True, False, True])
        before = first.copy()
        obs, infos = host.reset(seed=11, options={"reset_mask": mask})
        assert np.array_equal(obs[~mask], before[~mask])
        assert np.array_equal(obs[1], make().reset(seed=12)[0]) and np.array_equal(obs[3], make().reset(seed=14)[0])
        kept = obs.copy()
        assert np.array_equal(host.reset(options={"reset_mask": np.zeros(4, bool)})[0], kept)  # nothing reset
        with pytest.raises(ValueError):
            host.reset(seed=[1, 2])
        with pytest.raises(TypeError):
            host.reset(options={"reset_mask": [True] * 4})
        with pytest.raises(ValueError):
            host.step(np.ones(3, np.int64))
        sync.close()


def test_host_call_attributes_and_close() -> None:
    envs = [_nested_env(render_mode="rgb_array") for _ in range(3)]
    host = VectorHost(envs, close_envs=False)
    assert host.call("describe", "<", suffix=">") == ("<nested>",) * 3
    assert host.get_attr("horizon") == (9, 9, 9)
    host.set_attr("label", ["a", "b", "c"])
    assert host.call("describe", "") == ("a", "b", "c")
    host.set_attr("delay", 0.0)
    with pytest.raises(ValueError):
        host.set_attr("label", ["a"])
    for name in ("_position", "close"):
        with pytest.raises(UnknownMethodError):
            host.call(name)
    with pytest.raises(UnknownMethodError):
        host.set_attr("_count", 1)
    host.reset(seed=0)
    assert [frame.shape for frame in host.render()] == [(2, 2, 3)] * 3
    host.close()
    host.close()


def test_host_refuses_bad_envs() -> None:
    with pytest.raises(ServerConfigError):
        VectorHost([])
    with pytest.raises(ServerConfigError, match="observation_space"):
        VectorHost([gymnasium.make("CartPole-v1"), gymnasium.make("Pendulum-v1")], close_envs=False)
    with pytest.raises(ServerConfigError, match="spaces"):
        VectorHost([object()])



class _OldStepApi(gymnasium.Env):
    """Returns gym's old 4-tuple from ``step`` once ``old_after`` steps passed (5-tuples until then)."""

    observation_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, old_after: int = 0, ends_at: int = 0) -> None:
        self.old_after, self.ends_at, self.steps = old_after, ends_at, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return np.zeros(2, np.float32), {}

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps > self.old_after:
            return np.zeros(2, np.float32), 0.0, False, {}
        return np.zeros(2, np.float32), 0.0, self.steps == self.ends_at, False, {}


@pytest.mark.parametrize("after_an_autoreset", [False, True])
def test_host_says_what_step_must_return(after_an_autoreset: bool) -> None:
    """Both step loops (every env stepping, or some resetting) name the env and the 5-tuple."""
    envs = [_OldStepApi(), _OldStepApi()] if not after_an_autoreset else [_OldStepApi(1, 1), _OldStepApi(1)]
    host = VectorHost(envs)
    host.reset(seed=0)
    actions = np.zeros((2, 1), np.float32)
    if after_an_autoreset:
        host.step(actions)  # env 0 terminates: the next step resets it while env 1 steps
    with pytest.raises(TypeError, match=r"_OldStepApi.step\(\) must return Gymnasium's 5-tuple"):
        host.step(actions)


# --------------------------------------------------------------------------- FastVectorEnv over servers


@pytest.mark.parametrize("transport", ["auto", "tcp"])
def test_two_servers_match_sync_vector_env(cartpole_pair: list[str], transport: str) -> None:
    with FastVectorEnv(cartpole_pair, timeout=30, transport=transport) as envs:
        sync = cartpole_sync(8)
        assert envs.num_envs == 8 and envs.envs_per_server == (4, 4)
        assert envs.observation_space == sync.observation_space
        assert envs.action_space == sync.action_space
        assert envs.single_observation_space == sync.single_observation_space
        assert envs.single_action_space == sync.single_action_space
        assert envs.metadata == sync.metadata
        assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        assert envs.spec.id == "CartPole-v1" and envs.render_mode is None
        assert envs.transport == ((transport,) * 2 if transport == "tcp" else ("shm", "shm"))
        assert run_against_sync(envs, sync, STEPS) > 10  # plenty of autoresets
        # reseeding mid-run with per-env seeds, then more steps
        seeds = [100 + 3 * i for i in range(8)]
        same(envs.reset(seed=seeds), sync.reset(seed=seeds))
        sync.action_space.seed(1)
        for _ in range(40):
            actions = sync.action_space.sample()
            same(envs.step(actions), sync.step(actions))
        sync.close()


def test_reset_mask_across_servers(cartpole_pair: list[str]) -> None:
    with FastVectorEnv(cartpole_pair, timeout=30) as envs:
        sync = cartpole_sync(8)
        same(envs.reset(seed=2), sync.reset(seed=2))
        for _ in range(5):
            same(envs.step(np.ones(8, np.int64)), sync.step(np.ones(8, np.int64)))
        mask = np.array([False, True, False, False, False, False, False, False])  # the second server: all False
        same(
            envs.reset(seed=40, options={"reset_mask": mask}), sync.reset(seed=40, options={"reset_mask": mask.copy()})
        )
        for _ in range(20):
            same(envs.step(np.zeros(8, np.int64)), sync.step(np.zeros(8, np.int64)))
        with pytest.raises(ValueError):
            envs.reset(options={"reset_mask": np.zeros(8, bool)})
        with pytest.raises(ValueError):
            envs.reset(seed=[1, 2, 3])
        sync.close()


def test_one_server_shm_batch_is_zero_copy(serve) -> None:
    server = serve("CartPole-v1", "--num-envs", "6", "--mode", "per-client")
    with FastVectorEnv(server.address, timeout=30, transport="shm") as envs:
        sync = cartpole_sync(6)
        assert envs.transport == ("shm",)
        obs, _ = envs.reset(seed=0)
        obs, rewards, terminations, truncations, _ = envs.step(np.zeros(6, np.int64))
        for array in (obs, rewards, terminations, truncations):
            assert array.flags.writeable and not array.flags.owndata  # views into the arena, the caller's
        keep = [array.copy() for array in (obs, rewards, terminations, truncations)]
        assert run_against_sync(envs, sync, 100) > 0
        for array, kept in zip((obs, rewards, terminations, truncations), keep):
            assert np.array_equal(array, kept)  # never written again while held
        sync.close()


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_every_batch_of_1000_steps_kept_stays_as_it_was(serve, cartpole_pair: list[str], transport: str) -> None:
    one = serve("CartPole-v1", "--num-envs", "8", "--mode", "per-client")
    for addresses in ([one.address], cartpole_pair):  # one server (views into its arena), two (joined rows)
        with FastVectorEnv(addresses, timeout=30, transport=transport) as envs:
            sync = cartpole_sync(8)
            kept, expected = [envs.reset(seed=3)], [sync.reset(seed=3)]
            sampler = sync.action_space
            sampler.seed(3)
            for _ in range(1000):
                actions = sampler.sample()
                kept.append(envs.step(actions))
                expected.append(sync.step(actions))
            for got, want in zip(kept, expected):
                same(got, want)  # every batch returned is still what it was
            sync.close()


@pytest.mark.parametrize("options", [{"transport": "tcp"}, {"transport": "shm", "copy": True}])
def test_one_server_owned_arrays(serve, options: dict[str, Any]) -> None:
    server = serve("CartPole-v1", "--num-envs", "3", "--mode", "per-client")
    with FastVectorEnv(server.address, timeout=30, **options) as envs:
        obs, _ = envs.reset(seed=0)
        obs2, rewards, *_ = envs.step(np.zeros(3, np.int64))
        assert obs.flags.writeable and obs2.flags.writeable and rewards.flags.writeable
        keep = obs.copy()
        envs.step(np.ones(3, np.int64))
        assert np.array_equal(obs, keep)


def test_several_shm_servers_batch_stays_valid(cartpole_pair: list[str]) -> None:
    with FastVectorEnv(cartpole_pair, timeout=30, transport="shm") as envs:
        envs.reset(seed=0)
        obs = envs.step(np.zeros(8, np.int64))[0]
        assert obs.flags.writeable
        keep = obs.copy()
        for _ in range(10):
            assert not np.shares_memory(envs.step(np.ones(8, np.int64))[0], obs)
        assert np.array_equal(obs, keep)  # still the batch it was


def test_nested_spaces_over_uneven_servers(nested_pair: list[str]) -> None:
    with FastVectorEnv(nested_pair, timeout=30) as envs:
        sync = SyncVectorEnv([_nested_env] * 5)
        assert envs.envs_per_server == (2, 3)
        assert envs.observation_space == sync.observation_space
        assert envs.action_space == sync.action_space
        assert run_against_sync(envs, sync, 60) > 0
        options = {"scale": 2.5}
        same(envs.reset(seed=9, options=options), sync.reset(seed=9, options=options))
        sync.close()


def test_structured_env_one_server(serve) -> None:
    server = serve("fastenv.examples:StructuredEnv", "--num-envs", "3", "--mode", "per-client")
    with FastVectorEnv([server.address], timeout=30) as envs:
        sync = SyncVectorEnv([StructuredEnv] * 3)
        assert run_against_sync(envs, sync, 80) > 0
        sync.close()


def test_plain_servers_contribute_one_env_each(serve) -> None:
    plain = [serve("CartPole-v1", "--mode", "per-client").address for _ in range(2)]
    multi = serve("CartPole-v1", "--num-envs", "2", "--mode", "per-client").address
    with FastVectorEnv([plain[0], multi, plain[1]], timeout=30) as envs:
        assert envs.envs_per_server == (1, 2, 1)
        sync = cartpole_sync(4)
        assert run_against_sync(envs, sync, 120) > 0
        sync.close()


def test_call_get_attr_set_attr_render(nested_pair: list[str]) -> None:
    with FastVectorEnv(nested_pair, timeout=30) as envs:
        assert envs.call("describe", "<", suffix=">") == ("<nested>",) * 5
        assert envs.get_attr("horizon") == (9,) * 5
        envs.set_attr("label", [f"env{i}" for i in range(5)])
        assert envs.call("describe", "") == tuple(f"env{i}" for i in range(5))
        envs.set_attr("horizon", 4)
        assert envs.get_attr("horizon") == (4,) * 5
        with pytest.raises(ValueError):
            envs.set_attr("label", ["too", "few"])
        with pytest.raises(RemoteEnvError) as caught:
            envs.call("fail")
        assert isinstance(caught.value, ValueError) and "asked to fail" in str(caught.value)
        with pytest.raises(AttributeError):
            envs.call("_position")
        assert envs.render() == (None,) * 5
        envs.reset(seed=0)  # still usable after the remote errors
        assert envs.step(envs.action_space.sample())[1].shape == (5,)


def test_async_misuse_and_closed_errors(cartpole_pair: list[str]) -> None:
    envs = FastVectorEnv(cartpole_pair, timeout=30)
    with envs:
        envs.reset(seed=0)
        with pytest.raises(NoPendingCallError):
            envs.step_wait()
        envs.step_async(np.zeros(8, np.int64))
        with pytest.raises(AlreadyPendingError):
            envs.step_async(np.zeros(8, np.int64))
        for blocked in (lambda: envs.reset(), lambda: envs.call("get_wrapper_attr", "gravity"), envs.render):
            with pytest.raises(AlreadyPendingError):
                blocked()
        obs, rewards, *_ = envs.step_wait(timeout=20)
        assert obs.shape == (8, 4) and rewards.shape == (8,)
        with pytest.raises(NoPendingCallError):
            envs.step_wait()
        envs.step_async(np.ones(8, np.int64))  # pending at close: dropped cleanly
    assert envs.closed
    envs.close()  # idempotent
    for closed_call in (
        lambda: envs.step(np.zeros(8, np.int64)),
        lambda: envs.step_async(np.zeros(8, np.int64)),
        envs.step_wait,
        envs.reset,
        lambda: envs.get_attr("gravity"),
    ):
        with pytest.raises(ClientClosedError):
            closed_call()
    assert all(remote.closed for remote in envs.remotes)


def test_step_wait_timeout(serve) -> None:
    server = serve(NESTED, "--num-envs", "2", "--mode", "per-client")
    with FastVectorEnv(server.address, timeout=30) as envs:
        envs.reset(seed=0)
        envs.set_attr("delay", [0.0, 1.0])
        envs.step_async(envs.action_space.sample())
        started = time.monotonic()
        with pytest.raises(FastEnvTimeout):
            envs.step_wait(timeout=0.2)
        assert time.monotonic() - started < 0.9  # did not wait for the 1 s step
        with pytest.raises(NoPendingCallError):
            envs.step_wait()


def test_servers_step_concurrently(nested_pair: list[str]) -> None:
    # each server's envs sleep 1.0 s per step in all: 1.0 s if the servers step at once, 2.0 s in turn
    with FastVectorEnv(nested_pair, timeout=30) as envs:
        envs.reset(seed=0)
        envs.set_attr("delay", [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])
        envs.step_async(envs.action_space.sample())
        envs.step_wait(timeout=1.8)


def test_mismatched_servers_are_refused(serve) -> None:
    cartpole = serve("CartPole-v1", "--num-envs", "2", "--mode", "per-client")
    pendulum = serve("Pendulum-v1", "--num-envs", "2", "--mode", "per-client")
    with pytest.raises(IncompatibleEnvsError, match="spaces"):
        FastVectorEnv([cartpole.address, pendulum.address], timeout=30)
    with pytest.raises(ValueError):
        FastVectorEnv([])


def test_unclosed_vector_env_warns_and_closes(cartpole_pair: list[str]) -> None:
    envs = FastVectorEnv(cartpole_pair, timeout=30)
    remotes = envs.remotes
    with pytest.warns(ResourceWarning, match="not closed"):
        del envs
        gc.collect()
    assert all(remote.closed for remote in remotes)


def test_exported_lazily_from_the_package() -> None:
    assert fastenv.FastVectorEnv is FastVectorEnv
    assert fastenv.VectorHost is VectorHost
    with pytest.raises(AttributeError):
        fastenv.NoSuchThing  # noqa: B018
