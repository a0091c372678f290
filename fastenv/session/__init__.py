"""Sessions: what a client and the server keep about one connection between them.

Client side: :class:`fastenv.session.client.ClientSession` (handshake,
route, calls, resumption, the session-lost policy) under the env API of
:class:`fastenv.FastRemoteEnv`. Server side: the session table
(:mod:`fastenv.session.table`), the dispatcher that runs calls on envs
without touching a socket (:mod:`fastenv.session.dispatch`), the handlers of
the control connection's requests (:mod:`fastenv.session.handlers`), and the
liveness check (:mod:`fastenv.session.liveness`), under the facade
:class:`fastenv.EnvServer`.
"""
