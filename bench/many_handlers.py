"""Serves COUNT light handlers in one process, each on its own real socket, for the conductor benchmark.

Prints the endpoints, one per line, after ``serving``; runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys

from schedulezero_handler import Handler, expose
from schedulezero_handler import server as server_


class Light(Handler):
    @expose
    async def ping(self) -> str:
        return "pong"


async def main(count: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = [
        server_.Server(Light(), server_.ServerSettings(bind="tcp://127.0.0.1:*", idle_timeout=0)) for _ in range(count)
    ]
    for server in servers:
        await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("\n".join(server.endpoint for server in servers), flush=True)
    print(f"serving {count} handlers", flush=True)
    await stop.wait()
    await asyncio.gather(*(server.stop(drain_timeout=0) for server in servers))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
