"""The socket pump over real ZeroMQ sockets (inproc)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import zmq

from schedulezero_handler import pump


async def test_a_bad_frame_never_joins_the_next_message() -> None:
    context = zmq.Context()
    address = f"inproc://pump-{uuid.uuid4().hex}"
    receiver = context.socket(zmq.PAIR)
    receiver.bind(address)
    sender = context.socket(zmq.PAIR)
    sender.connect(address)
    received: list[list[bytes]] = []
    inbound = pump.SocketPump(receiver, received.append)
    outbound = pump.SocketPump(sender, lambda frames: None)
    try:
        bad: list[Any] = [b"first", "not bytes", b"third"]
        with pytest.raises(TypeError):
            outbound.send(bad)
        outbound.send([b"next", b"message"])
        outbound.send([b"one frame"])
        for _ in range(100):
            if len(received) == 3:
                break
            await asyncio.sleep(0.01)
        assert received == [[b"first", b""], [b"next", b"message"], [b"one frame"]]
    finally:
        inbound.close()
        outbound.close()
        context.term()
