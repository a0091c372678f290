"""What the server tells a client about its env, and how it finds an env's members.

The description goes to the client in the handshake: class name, spaces,
``metadata``, ``spec``, ``render_mode``, the public methods, and a hash of all
of it so clients can tell whether two servers serve the same env.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from fastenv import codec
from fastenv.errors import EncodeError, UnknownMethodError
from fastenv.shm.spin import advised_spin_us

# Attributes copied into the description when the env has them.
DESCRIBED_ATTRIBUTES = (
    "observation_space",
    "action_space",
    "metadata",
    "spec",
    "render_mode",
    "reward_range",
    # vector envs (``fastenv serve --num-envs N``)
    "num_envs",
    "single_observation_space",
    "single_action_space",
)

# Methods the client has dedicated calls for, or that would end the session's env.
RESERVED_METHODS = frozenset({"close"})

# An env that stands in for another (a served recording) defines this method to describe itself as that env.
DESCRIPTION_HOOK = "__fastenv_description__"


def client_spin_hint(env: Any) -> int | None:
    """How long a shared-memory client should spin for a reply, when ``env`` says (its ``shm_client_spin_us``).

    A :class:`~fastenv.vector.workers.WorkerVectorHost` whose worker
    processes take every CPU says 0: a spinning client would take one from
    them. Read from the instance's own attributes only (no ``__getattr__`` of
    an env runs); None when it says nothing.
    """
    try:
        hint = vars(env).get("shm_client_spin_us")
    except TypeError:  # no __dict__
        return None
    return advised_spin_us(hint)


def stands_in_for_vector(env: Any) -> bool:
    """Whether ``env`` describes itself (:data:`DESCRIPTION_HOOK`) as a vector env: it answers batched calls itself."""
    hook = getattr(type(env), DESCRIPTION_HOOK, None)
    if hook is None:
        return False
    attributes = hook(env).get("attributes", {})
    return isinstance(attributes, dict) and type(attributes.get("num_envs")) is int


def _carriable(value: Any) -> Any:
    """``value`` if the codec can carry it, else a readable stand-in (descriptions are best effort)."""
    try:
        codec.encode(value)
    except EncodeError:
        if isinstance(value, dict):
            return {key: _carriable(item) for key, item in value.items()}
        return f"<not transferable: {type(value).__qualname__}>"
    return value


def resolve_member(env: Any, name: str) -> Any:
    """Find a public member of ``env``, looking through Gymnasium wrappers.

    Raises :class:`UnknownMethodError` for private names or missing members.
    """
    if not isinstance(name, str) or not name or name.startswith("_"):
        raise UnknownMethodError(f"{name!r} is not a public member of the env")
    try:
        return getattr(env, name)
    except AttributeError:
        pass
    get_wrapper_attr = getattr(env, "get_wrapper_attr", None)
    if get_wrapper_attr is not None:
        try:
            return get_wrapper_attr(name)
        except AttributeError:
            pass
    raise UnknownMethodError(f"{type(env).__name__} has no public member {name!r}")


def public_methods(env: Any) -> list[str]:
    """Names of the env's public methods (its own and, through wrappers, the unwrapped env's)."""
    names: set[str] = set()
    classes = {type(env), type(getattr(env, "unwrapped", env))}
    for cls in classes:
        for name, member in inspect.getmembers(cls):
            if name.startswith("_"):
                continue
            if inspect.isfunction(member) or inspect.ismethoddescriptor(member) or inspect.isbuiltin(member):
                names.add(name)
    return sorted(names)


def wrapper_chain(env: Any, limit: int = 64) -> list[str]:
    """Qualified class names of the wrappers around the env, outermost first (Gymnasium's ``.env`` chain)."""
    chain: list[str] = []
    unwrapped = getattr(env, "unwrapped", env)
    while env is not unwrapped and len(chain) < limit:
        chain.append(f"{type(env).__module__}.{type(env).__qualname__}")
        inner = getattr(env, "env", None)
        if inner is None or inner is env:
            break
        env = inner
    return chain


def describe(env: Any) -> dict[str, Any]:
    """The env description sent in the handshake (without its hash).

    An env whose class defines :data:`DESCRIPTION_HOOK` gives its own.
    """
    own = getattr(type(env), DESCRIPTION_HOOK, None)
    if own is not None:
        return own(env)
    unwrapped = getattr(env, "unwrapped", env)
    info: dict[str, Any] = {
        "class": f"{type(unwrapped).__module__}.{type(unwrapped).__qualname__}",
        "wrapper": f"{type(env).__module__}.{type(env).__qualname__}",
        "wrappers": wrapper_chain(env),
        "methods": public_methods(env),
        "attributes": {},
    }
    for name in DESCRIBED_ATTRIBUTES:
        try:
            value = resolve_member(env, name)
        except (UnknownMethodError, AttributeError):
            continue
        except Exception:  # a property that raises: leave it out
            continue
        info["attributes"][name] = _carriable(value)
    return info


def description_hash(description: dict[str, Any]) -> str:
    """A short stable hash of a description."""
    skeleton, buffers = codec.encode(description)
    digest = hashlib.sha256(skeleton)
    for buffer in buffers:
        digest.update(memoryview(buffer).cast("B"))
    return digest.hexdigest()[:16]
