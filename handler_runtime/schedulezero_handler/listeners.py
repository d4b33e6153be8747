"""A CURVE handler's listeners: its key pair on its port and, while its keys rotate, the next pair on the next port.

A CurveZMQ server has one key pair per listener: libzmq copies a socket's
options into a listener when it binds, so one ROUTER socket can bind two
ports with two pairs, and replies reach a caller whichever port it came in by.
A listener cannot change its pair, and unbinding it drops the connections it
accepted. So a rotation never changes the pair under a caller:

1. ``next.key_secret`` appears beside ``server.key_secret``: the next pair is
   served on port + 1 as well, and callers move there (their calls in flight
   finish on the connections they were sent on);
2. ``server.key_secret`` becomes the next pair: the main port is bound again
   with it, which drops only the connections of callers that did not move;
3. ``next.key_secret`` goes: port + 1 closes once callers are back on the
   main port.

Both files are re-read every few seconds (a mounted Secret is updated in place
by the kubelet), as the authorized keys are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from typing import Any

import zmq

from schedulezero_handler import security

log = logging.getLogger(__name__)

NEXT_KEY = "next.key_secret"
"""The next pair's file, beside the handler's own ``.key_secret``."""


def rotation_endpoint(endpoint: str) -> str:
    """Where a handler at ``endpoint`` (``tcp://host:port``) serves its next key pair during a rotation."""
    host, colon, port = endpoint.rpartition(":")
    if not colon or not port.isdigit() or not host.startswith("tcp://"):
        raise ValueError(f"{endpoint!r} is not tcp://host:port")
    return f"{host}:{int(port) + 1}"


class _Unreadable(Exception):
    """A key pair file that is there but cannot be read (being replaced, or damaged): its listener stays."""


def _read(path: pathlib.Path) -> tuple[bytes, bytes] | None:
    """The pair in ``path``, or None when there is no such file."""
    if not path.exists():
        return None
    try:
        return security.load_pair(path)
    except (OSError, ValueError) as error:
        log.warning("cannot read the key pair %s: %s", path, error)
        raise _Unreadable(str(error)) from None


class CurveListeners:
    """Binds ``socket`` at ``bind`` with the pair of ``key_file``, and follows that file and the next pair's."""

    def __init__(self, socket: zmq.Socket[Any], *, bind: str, key_file: pathlib.Path) -> None:
        self._socket = socket
        self._bind = bind
        self._key_file = key_file
        self._next_file = key_file.parent / NEXT_KEY
        self._main: tuple[bytes, bytes] | None = None
        self._next: tuple[bytes, bytes] | None = None
        self.endpoint = ""
        """The main listener's endpoint as bound (the port resolved)."""
        self._next_endpoint: str | None = None

    def start(self) -> str:
        pair = security.load_pair(self._key_file)
        self.endpoint = self._listen(pair, self._bind)
        self._main = pair
        with contextlib.suppress(_Unreadable):
            self._follow_next(_read(self._next_file))
        return self.endpoint

    def _listen(self, pair: tuple[bytes, bytes], endpoint: str) -> str:
        self._socket.curve_server = True
        self._socket.curve_publickey, self._socket.curve_secretkey = pair
        self._socket.bind(endpoint)
        return str(self._socket.getsockopt_string(zmq.LAST_ENDPOINT))

    async def refresh(self) -> None:
        """Serves what the files say now; a file that cannot be read leaves its listener as it is."""
        with contextlib.suppress(_Unreadable):
            main = _read(self._key_file)
            if main is not None and main != self._main:
                log.info("serving a new key pair on %s", self.endpoint)
                self._socket.unbind(self.endpoint)
                self.endpoint = await self._rebind(main, self.endpoint)
                self._main = main
        with contextlib.suppress(_Unreadable):
            self._follow_next(_read(self._next_file))

    def _follow_next(self, pair: tuple[bytes, bytes] | None) -> None:
        if pair == self._next:
            return
        if self._next_endpoint is not None:
            self._socket.unbind(self._next_endpoint)
            self._next_endpoint = None
        self._next = pair
        if pair is not None:
            try:
                self._next_endpoint = self._listen(pair, rotation_endpoint(self.endpoint))
            except (zmq.ZMQError, ValueError) as error:  # callers then stay on the main port, and the rotation waits
                log.warning("cannot serve the next key pair beside %s: %s", self.endpoint, error)
                return
            log.info("serving the next key pair on %s during a key rotation", self._next_endpoint)

    async def _rebind(self, pair: tuple[bytes, bytes], endpoint: str) -> str:
        """Binds again where the listener just closed; libzmq closes it on its I/O thread, so wait for that."""
        for _ in range(100):
            try:
                return self._listen(pair, endpoint)
            except zmq.ZMQError as error:
                if error.errno != zmq.EADDRINUSE:
                    raise
                await asyncio.sleep(0.02)
        return self._listen(pair, endpoint)
