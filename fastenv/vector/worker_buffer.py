"""The shared batch buffer of worker-process vector envs (see :mod:`fastenv.vector.workers`).

One memory segment, shared by the host and its workers, laid out as:

- a header: the *go* and *host* doorbells (:data:`GO_WORD`, :data:`HOST_WORD`,
  each on a cache line of its own), the count of workers still stepping
  (:data:`REMAINING_WORD`) and the number of the current step (:data:`SEQ_WORD`);
- a word per worker for its task (``TASK_*``, see :func:`task_word`), its last
  finished step and whether a message follows;
- a byte per env saying its ``info`` is not empty;
- two words per env for the async pool: the host's request count and the
  worker's completed count (the env steps while they differ);
- the rewards, terminations and truncations, then the observations and actions
  leaf by leaf, batched as Gymnasium batches them.

:class:`BatchLayout` plans where each part lies (from the spaces, the env
count and the worker count) and gives numpy views of them with the readers and
writers of one env's row; :func:`shared_fd` makes the anonymous file behind
the segment.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import create_empty_array

from fastenv.errors import ServerConfigError

__all__ = [
    "GO_WORD",
    "HOST_WORD",
    "REMAINING_WORD",
    "SEQ_WORD",
    "TASK_COMMAND",
    "TASK_IDLE",
    "TASK_POOL",
    "TASK_STEP",
    "TASK_STOP",
    "U32",
    "BatchLayout",
    "row_writer",
    "shared_fd",
    "task_word",
]

# Words of the segment's header (byte offsets; the two doorbells on cache lines of their own).
GO_WORD, HOST_WORD, REMAINING_WORD, SEQ_WORD = 0, 64, 128, 132
_HEADER_BYTES = 192
_ALIGN = 64
# A worker's task word.
TASK_IDLE, TASK_STEP, TASK_COMMAND, TASK_STOP, TASK_POOL = 0, 1, 2, 3, 4
#: All bits of a 32-bit word: added to a word, it subtracts one.
U32 = 0xFFFFFFFF

_LEAVES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def task_word(index: int) -> int:
    """Byte offset of worker ``index``'s task word: the task array comes first after the header."""
    return _HEADER_BYTES + 4 * index


@dataclasses.dataclass(frozen=True)
class _Leaf:
    offset: int
    dtype: str
    shape: tuple[int, ...]


def _align(value: int) -> int:
    return -(-value // _ALIGN) * _ALIGN


def _leaf_arrays(space: spaces.Space, num_envs: int, what: str) -> list[np.ndarray]:
    """Gymnasium's empty batch arrays of ``space``'s leaves, in the order :func:`_nest` consumes them."""
    if isinstance(space, spaces.Dict):
        return [array for sub in space.spaces.values() for array in _leaf_arrays(sub, num_envs, what)]
    if isinstance(space, spaces.Tuple):
        return [array for sub in space.spaces for array in _leaf_arrays(sub, num_envs, what)]
    if isinstance(space, _LEAVES):
        return [create_empty_array(space, n=num_envs, fn=np.zeros)]
    raise ServerConfigError(
        f"--workers needs {what} spaces made of Box, Discrete, MultiDiscrete, MultiBinary, Dict and Tuple "
        f"(they travel in a fixed-size shared batch); {type(space).__name__} is not one: serve without --workers"
    )


def _nest(space: spaces.Space, leaves: Any) -> Any:
    """The batch structure of ``space`` (dict / tuple nesting as Gymnasium's), filled from the ``leaves`` iterator."""
    if isinstance(space, spaces.Dict):
        return {key: _nest(sub, leaves) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_nest(sub, leaves) for sub in space.spaces)
    return next(leaves)


def _row_writer(space: spaces.Space, batch: Any) -> Callable[[int, Any], None]:
    """``write(i, value)``: one env's value into row ``i`` of ``batch``."""
    if isinstance(space, spaces.Dict):
        parts = [(key, _row_writer(sub, batch[key])) for key, sub in space.spaces.items()]

        def write_dict(index: int, value: Any) -> None:
            for key, write in parts:
                write(index, value[key])

        return write_dict
    if isinstance(space, spaces.Tuple):
        writers = [_row_writer(sub, part) for sub, part in zip(space.spaces, batch, strict=True)]

        def write_tuple(index: int, value: Any) -> None:
            for write, item in zip(writers, value, strict=True):
                write(index, item)

        return write_tuple
    return batch.__setitem__


#: ``row_writer(space, batch)``: ``write(i, value)``, one env's value into row ``i`` of ``batch``.
row_writer = _row_writer


def _row_reader(space: spaces.Space, batch: Any) -> Callable[[int], Any]:
    """``read(i)``: row ``i`` of ``batch`` as ``gymnasium.vector.utils.iterate`` yields it."""
    if isinstance(space, spaces.Dict):
        parts = [(key, _row_reader(sub, batch[key])) for key, sub in space.spaces.items()]
        return lambda index: {key: read(index) for key, read in parts}
    if isinstance(space, spaces.Tuple):
        readers = [_row_reader(sub, part) for sub, part in zip(space.spaces, batch, strict=True)]
        return lambda index: tuple(read(index) for read in readers)
    return batch.__getitem__


def _batch_writer(space: spaces.Space, batch: Any, path: str = "actions") -> Callable[[Any], None]:
    """``write(value)``: a whole batch (shape checked, as Gymnasium's ``iterate`` would refuse it) into ``batch``."""
    if isinstance(space, spaces.Dict):
        parts = [(key, _batch_writer(sub, batch[key], f"{path}[{key!r}]")) for key, sub in space.spaces.items()]

        def write_dict(value: Any) -> None:
            for key, write in parts:
                write(value[key])

        return write_dict
    if isinstance(space, spaces.Tuple):
        writers = [
            _batch_writer(sub, part, f"{path}[{index}]")
            for index, (sub, part) in enumerate(zip(space.spaces, batch, strict=True))
        ]

        def write_tuple(value: Any) -> None:
            if len(value) != len(writers):
                raise ValueError(f"{path} must have {len(writers)} parts, got {len(value)}")
            for write, item in zip(writers, value, strict=True):
                write(item)

        return write_tuple
    shape = batch.shape

    def write_array(value: Any) -> None:
        got = np.shape(value)
        if got != shape:
            raise ValueError(f"{path} must have shape {shape} (one row per env), got {got}")
        batch[...] = value

    return write_array


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """Where everything lies in the shared segment (the host plans it; workers get a copy)."""

    num_envs: int
    workers: int
    observation_space: spaces.Space
    action_space: spaces.Space
    task: int
    done: int
    mail: int
    flags: int
    requests: int
    completes: int
    rewards: int
    terminations: int
    truncations: int
    observations: tuple[_Leaf, ...]
    actions: tuple[_Leaf, ...]
    size: int

    @classmethod
    def plan(
        cls, observation_space: spaces.Space, action_space: spaces.Space, num_envs: int, workers: int
    ) -> BatchLayout:
        """The layout of a batch of ``num_envs`` envs with these spaces, stepped by ``workers`` workers."""
        cursor = _HEADER_BYTES

        def take(nbytes: int) -> int:
            nonlocal cursor
            offset = cursor
            cursor = _align(cursor + max(nbytes, 1))
            return offset

        words = 4 * workers
        task, done, mail = take(words), take(words), take(words)
        assert task == task_word(0)
        flags, requests, completes = take(num_envs), take(4 * num_envs), take(4 * num_envs)
        rewards = take(8 * num_envs)
        terminations, truncations = take(num_envs), take(num_envs)

        def leaves(space: spaces.Space, what: str) -> tuple[_Leaf, ...]:
            return tuple(
                _Leaf(take(array.nbytes), array.dtype.str, array.shape) for array in _leaf_arrays(space, num_envs, what)
            )

        observations = leaves(observation_space, "observation")
        actions = leaves(action_space, "action")
        return cls(
            num_envs, workers, observation_space, action_space, task, done, mail, flags, requests, completes, rewards,
            terminations, truncations, observations, actions, _align(cursor),
        )  # fmt: skip

    def views(self, buf: Any) -> _Views:
        """numpy views of this layout over ``buf`` (the mapped segment)."""
        return _Views(self, buf)


class _Views:
    """numpy views of a :class:`BatchLayout` over a mapped segment, and the row readers / writers."""

    def __init__(self, layout: BatchLayout, buf: Any) -> None:
        n, w = layout.num_envs, layout.workers

        def array(offset: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
            return np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset)

        self.task = array(layout.task, np.uint32, (w,))
        self.done = array(layout.done, np.uint32, (w,))
        self.mail = array(layout.mail, np.uint32, (w,))
        self.flags = array(layout.flags, np.uint8, (n,))
        self.requests = array(layout.requests, np.uint32, (n,))
        self.completes = array(layout.completes, np.uint32, (n,))
        self.rewards = array(layout.rewards, np.float64, (n,))
        self.terminations = array(layout.terminations, np.bool_, (n,))
        self.truncations = array(layout.truncations, np.bool_, (n,))
        self.observations = _nest(
            layout.observation_space, iter([array(leaf.offset, leaf.dtype, leaf.shape) for leaf in layout.observations])
        )
        self.actions = _nest(
            layout.action_space, iter([array(leaf.offset, leaf.dtype, leaf.shape) for leaf in layout.actions])
        )
        self.write_observation = _row_writer(layout.observation_space, self.observations)
        self.read_action = _row_reader(layout.action_space, self.actions)
        self.write_actions = _batch_writer(layout.action_space, self.actions)


def shared_fd() -> int:
    """A file descriptor of an anonymous shared file: a memfd, else an unlinked file in /dev/shm (or /tmp)."""
    create = getattr(os, "memfd_create", None)
    if create is not None:
        try:
            return create("fastenv-vector-batch", getattr(os, "MFD_CLOEXEC", 1))
        except OSError:
            pass
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="fastenv-vector-", dir=folder)
    os.unlink(path)  # nothing left behind, however the processes end
    return fd
