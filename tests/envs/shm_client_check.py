"""Run in a subprocess: drive a served VectorEnv over shared memory and compare with a local one."""

import sys

import numpy as np

import fastenv
from fastenv.examples import VectorEnv
from fastenv.shm import futex

address = sys.argv[1]
local = VectorEnv()
with fastenv.FastRemoteEnv(address, transport="shm", timeout=30) as remote:
    for seed in (0, 1):
        expected = local.reset(seed=seed)
        got = remote.reset(seed=seed)
        assert np.array_equal(got[0], expected[0])
        for i in range(300):
            action = np.full(4, np.sin(i), dtype=np.float32)
            want = local.step(action)
            have = remote.step(action)
            assert np.array_equal(have[0], want[0]) and have[1:] == want[1:], (i, have, want)
print(f"OK {remote.transport} {futex.BACKEND}")
