"""Sharing one env: the control lease and the observers' transitions, as :class:`~fastenv.FastRemoteEnv` methods."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastenv.errors import ControlDenied, FastEnvTimeout, ProtocolError
from fastenv.observe import Transition, TransitionSubscriber
from fastenv.protocol import LEASE


class SharingCalls:
    """Lease and observer calls; mixed into :class:`~fastenv.FastRemoteEnv` (``_session``, ``_observer``, ``invoke``)."""

    _session: Any
    _observer: TransitionSubscriber | None
    _auth: Any
    address: str
    invoke: Callable[..., Any]

    # ------------------------------------------------------------------ sharing

    def acquire_control(self, timeout: float = 0.0) -> None:
        """Take the control lease of a shared env, waiting up to ``timeout`` seconds for it.

        While this client holds it, other clients cannot change the env (they
        get :class:`~fastenv.LeaseHeld`). Released by :meth:`release_control`,
        by closing, or when this client vanishes.
        """
        self._session.acquire_control(timeout)

    def release_control(self) -> bool:
        """Give the control lease back; False if this client did not hold it."""
        return bool(self.invoke(LEASE, ("release",)))

    @property
    def lease_holder(self) -> str | None:
        """Session id of the client holding the control lease (None: nobody)."""
        return self.invoke(LEASE, ("holder",))

    def next_transition(self, timeout: float | None = None) -> Transition:
        """(Observers) the next call that changed the shared env, in order.

        Raises :class:`~fastenv.FastEnvTimeout` if none comes within ``timeout``
        seconds. A slow observer skips transitions instead of slowing the
        controller; :attr:`skipped` counts them.
        """
        if self._observer is None:
            raise ControlDenied("only observers receive transitions: connect with role='observer'")
        return self._observer.next(timeout)

    def transitions(self, timeout: float | None = None) -> Iterator[Transition]:
        """(Observers) iterate over transitions until none comes for ``timeout`` seconds."""
        while True:
            try:
                yield self.next_transition(timeout)
            except FastEnvTimeout:
                return

    @property
    def skipped(self) -> int:
        """(Observers) how many transitions this observer missed because it fell behind."""
        return self._observer.skipped if self._observer is not None else 0

    def _subscribe(self, timeout: float) -> None:
        offer = self._session.welcome.get("observe")
        if not offer:
            raise ProtocolError("the server offers no transition stream")
        host = self.address.removeprefix("tcp://").rpartition(":")[0]  # brackets kept: a ZeroMQ endpoint
        self._observer = TransitionSubscriber(f"tcp://{host}:{int(offer['port'])}", timeout=timeout, auth=self._auth)

    def _close_observer(self) -> None:
        if self._observer is not None:
            self._observer.close()
            self._observer = None
