"""What the handshake said about the session and the served env, as :class:`~fastenv.FastRemoteEnv` attributes."""

from __future__ import annotations

import functools
from typing import Any

from fastenv.errors import UnknownMethodError
from fastenv.protocol import GETATTR


class HandshakeAttributes:
    """The route, the server, and the served env's spaces and attributes; other public attributes are fetched.

    Mixed into :class:`~fastenv.FastRemoteEnv`, whose ``_session`` holds the handshake.
    """

    _session: Any
    call: Any
    invoke: Any

    @property
    def transport(self) -> str:
        """The data plane chosen: ``"shm"``, or ``"tcp"`` (the TCP stream or, see :attr:`transport_reason`, the control connection)."""
        return self._session.plane

    @property
    def transport_reason(self) -> str:
        """Why :attr:`transport` was chosen, and how calls travel."""
        return self._session.reason

    @property
    def session_id(self) -> str:
        """The server's id of this session."""
        return self._session.session_id

    @property
    def server_info(self) -> dict[str, Any]:
        """What the server said about itself in the handshake (version, host, mode, limits...)."""
        return self._session.welcome["server"]

    @property
    def env_info(self) -> dict[str, Any]:
        """The served env's description from the handshake (class, methods, attributes)."""
        return self._session.welcome["env"]

    @property
    def env_hash(self) -> str:
        """A hash of :attr:`env_info`: equal for envs described alike."""
        return self._session.welcome["env_hash"]

    @property
    def unwrapped(self) -> HandshakeAttributes:
        """The client is its own innermost env (wrappers live on the server)."""
        return self

    @property
    def observation_space(self) -> Any:
        """The served env's observation space (from the handshake)."""
        return self._described("observation_space")

    @property
    def action_space(self) -> Any:
        """The served env's action space (from the handshake)."""
        return self._described("action_space")

    @property
    def metadata(self) -> Any:
        """The served env's ``metadata``."""
        return self._described("metadata")

    @property
    def spec(self) -> Any:
        """The served env's ``spec`` (a Gymnasium ``EnvSpec`` or None); ``gymnasium.make`` sets its own."""
        if "_spec" in self.__dict__:
            return self.__dict__["_spec"]
        return self._attributes().get("spec")

    @spec.setter
    def spec(self, value: Any) -> None:
        self.__dict__["_spec"] = value

    @property
    def render_mode(self) -> Any:
        """The served env's ``render_mode``."""
        return self._attributes().get("render_mode")

    def _attributes(self) -> dict[str, Any]:
        """The attributes the handshake described (empty before it)."""
        session = self.__dict__.get("_session")
        return {} if session is None else session.welcome.get("env", {}).get("attributes", {})

    def _described(self, name: str) -> Any:
        attributes = self._attributes()
        if name in attributes:
            return attributes[name]
        raise AttributeError(f"the served env ({self.env_info.get('class')}) has no attribute {name!r}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attributes = self._attributes()
        if name in attributes:
            return attributes[name]
        session = self.__dict__.get("_session")
        if session is None:
            raise AttributeError(name)
        if name in session.welcome.get("env", {}).get("methods", ()):
            return functools.partial(self.call, name)
        try:
            return self.invoke(GETATTR, (name,))
        except UnknownMethodError as exc:
            raise AttributeError(str(exc)) from None
