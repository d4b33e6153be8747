"""The servers ``bench_calls.py`` compares the handler runtime with, each run as its own process.

``python bench/peer_servers.py zmq-rep tcp://127.0.0.1:PORT`` serves raw pyzmq
REP + msgpack: the floor, with no framing, dispatch or checks of any kind.
``python bench/peer_servers.py aiohttp PORT`` serves HTTP + JSON with aiohttp.
Both answer a request ``{"value": V}`` with ``V`` and print ``serving …`` once
ready; SIGTERM ends them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import msgpack
import zmq
from aiohttp import web


def serve_zmq_rep(endpoint: str) -> None:
    """A blocking REP loop: receive, unpack, pack the value, send."""
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(endpoint)
    print(f"serving zmq REP on {endpoint}", flush=True)
    while True:
        request: dict[str, Any] = msgpack.unpackb(socket.recv())
        socket.send(msgpack.packb(request["value"]))


async def _echo(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.json()
    return web.json_response(body["value"])


async def serve_aiohttp(port: int) -> None:
    """POST /echo with a JSON body, keep-alive, no access log."""
    app = web.Application()
    app.router.add_post("/echo", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"serving aiohttp on 127.0.0.1:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["zmq-rep", "aiohttp"])
    parser.add_argument("address", help="ZeroMQ endpoint for zmq-rep, TCP port for aiohttp")
    args = parser.parse_args()
    if args.kind == "zmq-rep":
        serve_zmq_rep(args.address)
    else:
        asyncio.run(serve_aiohttp(int(args.address)))


if __name__ == "__main__":
    main()
