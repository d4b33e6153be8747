"""Reading a ZeroMQ socket from the event loop, a batch per wake-up, without a Future per message.

pyzmq's asyncio sockets create and resolve a Future for every message; at
thousands of calls a second that is most of the cost. Here the loop watches
the socket's file descriptor and drains every message that has arrived.

ZeroMQ's descriptor is edge-triggered: any operation on the socket (a send
included) may consume the notification of a message that has just arrived.
So every send schedules one more drain, and a drain reads until the socket's
own EVENTS says nothing is left, never trusting the descriptor alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq

log = logging.getLogger(__name__)

BATCH = 1000
"""Messages handled per drain before yielding to the loop."""


class SocketPump:
    def __init__(self, socket: zmq.Socket[Any], on_message: Callable[[list[bytes]], None]) -> None:
        self.socket = socket
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        self._closed = False
        self._loop.add_reader(socket.FD, self.drain)
        self.kick()

    def send(self, frames: list[bytes]) -> None:
        """Sends without waiting; raises zmq.Again when the socket cannot take it now."""
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
        finally:
            self.kick()

    def kick(self) -> None:
        """Drains soon, in case an operation consumed the descriptor's notification."""
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self.drain)

    def drain(self) -> None:
        """Handles every message that has arrived (up to a batch)."""
        self._scheduled = False
        if self._closed:
            return
        for _ in range(BATCH):
            if not int(self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._on_message(frames)
            except Exception:
                log.exception("a message could not be handled")
        self.kick()  # more are waiting: let other work run first

    def close(self, *, linger: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.socket.FD)
        self.socket.close(linger=linger)
