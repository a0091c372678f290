"""How a call travels between client and server: one interface, three routes.

:mod:`fastenv.transport.base` declares the interface every route
implements on each side; the routes are the shared-memory arena
(:mod:`fastenv.shm`), the TCP data stream (:mod:`fastenv.tcp`) and the ZeroMQ
control connection itself (:mod:`fastenv.transport.control`).
:mod:`fastenv.transport.choose` is the one place that picks a route for a new
session and says why.
"""
