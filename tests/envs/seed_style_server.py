"""A server script written the way seed users wrote them; only the import changed."""

import sys

from fastenv.compat import RemoteServer
from fastenv.examples import LegacyEnv

if __name__ == "__main__":
    server = RemoteServer(port=int(sys.argv[1]))
    env = LegacyEnv()
    env.seed(3)
    server.set_environment(env)
    server.start()  # blocks until SIGTERM
