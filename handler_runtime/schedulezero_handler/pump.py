"""Reading a ZeroMQ socket from the event loop, a batch per wake-up, without a Future per message.

pyzmq's asyncio sockets create and resolve a Future for every message; at
thousands of calls a second that is most of the cost. Here the loop watches
the socket's file descriptor and drains every message that has arrived.

ZeroMQ's descriptor is edge-triggered: any operation on the socket (a send
included) may consume the notification of a message that has just arrived.
So every send schedules one more drain, and a drain reads until the socket
itself says nothing is left (``zmq.Again``), never trusting the descriptor alone.
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

# Plain ints: pyzmq's flag enums cost an object per operation, several per message.
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)


class SocketPump:
    def __init__(
        self,
        socket: zmq.Socket[Any],
        on_message: Callable[[list[bytes]], None],
        *,
        peer_property: str | None = None,
    ) -> None:
        self.socket = socket
        self._on_message = on_message
        self._peer_property = peer_property
        self.peer: str | None = None
        """While ``on_message`` runs: the message's ``peer_property`` (e.g. ZAP's ``User-Id``), if asked for."""
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        self._closed = False
        self._held = False
        self._loop.add_reader(socket.FD, self.drain)
        self.kick()

    def hold(self) -> None:
        """Leaves arrived messages in the socket until ``release``: a caller sending a burst sends it
        before it handles the replies, which would otherwise take turns with the sends on the loop.

        Nothing is lost meanwhile as long as the socket's receive high-water mark has room: a caller
        holding replies sets none (``RCVHWM`` 0), as its replies are bounded by its own calls.
        """
        if not self._held and not self._closed:
            self._held = True
            self._loop.remove_reader(self.socket.FD)

    def release(self) -> None:
        """Handles the messages that arrived during a ``hold``, and reads as before."""
        if self._held and not self._closed:
            self._held = False
            self._loop.add_reader(self.socket.FD, self.drain)
            self.kick()

    def send(self, frames: list[bytes]) -> None:
        """Sends without waiting; raises zmq.Again when the socket cannot take it now."""
        send = self.socket.send
        *head, last = frames
        sent = 0
        try:
            # Frame by frame, with int flags: send_multipart's checks and enums cost more than
            # the sends. As with send_multipart, zmq.Again normally comes on the first frame.
            for frame in head:
                send(frame, _MORE)
                sent += 1
            send(last, _LAST)
        except TypeError:
            if sent:  # a frame that is not bytes, after others: end the message rather than join the next
                send(b"", _LAST)
            raise
        finally:
            self.kick()

    def kick(self) -> None:
        """Drains soon, in case an operation consumed the descriptor's notification."""
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self.drain)

    def drain(self) -> None:
        """Handles every message that has arrived (up to a batch), unless held."""
        self._scheduled = False
        if self._closed or self._held:
            return
        if not self._read(BATCH):
            self.kick()  # more are waiting: let other work run first

    def read_held(self) -> None:
        """Handles every message that has arrived, even during a ``hold``: for a caller about to give up
        on a reply, which may be among them."""
        if not self._closed:
            while not self._read(BATCH):
                pass

    def _read(self, limit: int) -> bool:
        """Handles up to ``limit`` messages; True once the socket has none left."""
        recv = self.socket.recv
        for _ in range(limit):
            # Until the socket says Again: that also re-arms its descriptor. Frames rather
            # than bytes, for their `more` flag: asking the socket for RCVMORE costs more.
            try:
                frame = recv(_LAST, copy=False)
            except zmq.Again:
                return True
            frames = [frame.bytes]
            while frame.more:
                frame = recv(_LAST, copy=False)
                frames.append(frame.bytes)
            if self._peer_property is not None:
                try:
                    self.peer = str(frame.get(self._peer_property))
                except zmq.ZMQError:
                    self.peer = None
            try:
                self._on_message(frames)
            except Exception:
                log.exception("a message could not be handled")
        return False

    def close(self, *, linger: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._held:
            self._loop.remove_reader(self.socket.FD)
        self.socket.close(linger=linger)
