"""Calling handlers: one DEALER socket per endpoint, shared by every call to it.

A reader task per connection resolves replies by call id, so any number of
calls can be in flight on one socket. Every call has a deadline and a socket
monitor fails calls at once when the connection drops, so a dead handler
costs a caller at most its timeout, never a hang. Retries keep the call id:
a handler that already ran the call answers from its reply cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import zmq
import zmq.utils.monitor

from schedulezero_handler import errors, protocol, pump, security

log = logging.getLogger(__name__)

DISCONNECT_GRACE = 0.2
"""Seconds replies may still arrive after the connection is reported lost."""

REPLY_GRACE = 0.5
"""Seconds a caller waits beyond the deadline it sends, so the handler's own
DeadlineExceeded (which names the method) arrives before the caller gives up."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter between attempts of retryable errors."""

    max_attempts: int = 3
    """Attempts in all, the first one included."""
    backoff: float = 1.0
    """Upper bound of the wait before the second attempt, in seconds; it doubles each time."""
    max_backoff: float = 60.0
    """Cap of that bound."""

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait after ``attempt`` failed: uniform in [0, min(max_backoff, backoff·2^(attempt-1))]."""
        return rng.uniform(0.0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """Socket behaviour of every connection a Client opens."""

    curve: security.CurveClient | None = None
    """CurveZMQ keys; None talks in clear text."""
    heartbeat_interval: float = 2.0
    """Seconds between ZMTP heartbeats; a peer silent for three intervals is dropped."""
    reconnect_interval: float = 0.1
    """First wait before reconnecting to a handler that went away."""
    reconnect_interval_max: float = 5.0
    """Cap of the reconnect wait, which grows while the handler stays away."""
    max_message_size: int = protocol.MAX_REPLY_SIZE
    """Largest reply accepted; a larger one fails its call ``MessageTooLarge``, the connection stays.
    ZeroMQ drops the connection of a handler that sends more than ``protocol.TRANSPORT_FACTOR`` times this."""
    max_call_size: int = protocol.MAX_MESSAGE_SIZE
    """Largest call sent, as handlers accept by default; a larger one fails ``MessageTooLarge`` unsent."""
    connect_timeout: float = 5.0
    """How long a call waits for a connection to a handler that is not connected, before Unavailable."""


class _Connection:
    """A DEALER connected to one endpoint, read by a pump, watched by a socket monitor."""

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        settings: ClientSettings,
        on_state: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.up: bool | None = None
        """Connected (True), lost or refused (False), or not known yet (None)."""
        self._on_state = on_state
        self.connect_timeout = settings.connect_timeout
        self.max_reply_size = settings.max_message_size
        self.max_call_size = settings.max_call_size
        self.pending: dict[bytes, list[asyncio.Future[protocol.Reply]]] = {}
        """Call id -> a future per caller waiting for its reply (a duplicate call has two)."""
        self.refused: errors.Unauthorized | None = None
        self.on_idle: Callable[[], None] | None = None
        """Called when the last call waiting on this connection is answered (a retiring connection closes)."""
        socket: zmq.Socket[bytes] = zmq.Socket(context, zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IMMEDIATE, 1)
        # No high-water mark on replies: they are bounded by this client's own calls in flight, and a
        # reply with no room would be dropped by the handler, its call retried or failed for nothing.
        socket.setsockopt(zmq.RCVHWM, 0)
        heartbeat_ms = int(settings.heartbeat_interval * 1000)
        socket.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * heartbeat_ms)
        socket.setsockopt(zmq.HEARTBEAT_TTL, 3 * heartbeat_ms)
        socket.setsockopt(zmq.RECONNECT_IVL, int(settings.reconnect_interval * 1000))
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, int(settings.reconnect_interval_max * 1000))
        socket.setsockopt(zmq.MAXMSGSIZE, protocol.TRANSPORT_FACTOR * settings.max_message_size)
        if settings.curve is not None:
            settings.curve.apply(socket)
        monitor_address = f"inproc://schedulezero-monitor-{uuid.uuid4().hex}"
        socket.monitor(
            monitor_address,
            zmq.EVENT_DISCONNECTED
            | zmq.EVENT_CONNECT_RETRIED
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        )
        monitor: zmq.Socket[bytes] = zmq.Socket(context, zmq.PAIR)
        monitor.connect(monitor_address)
        try:
            socket.connect(endpoint)
        except zmq.ZMQError:
            socket.disable_monitor()
            monitor.close(linger=0)
            socket.close(linger=0)
            raise
        self.replies = pump.SocketPump(socket, self._reply)
        self.events = pump.SocketPump(monitor, self._event)

    def _reply(self, frames: list[bytes]) -> None:
        try:
            kind, call_id, _, body = protocol.split(frames, max_size=self.max_reply_size)
        except protocol.ProtocolError as error:  # no call id to fail: nobody is waiting for it
            log.warning("dropping a malformed reply from %s: %s", self.endpoint, error)
            return
        except errors.CallError as error:  # about one call (too large, unknown kind): that call fails
            call_id = bytes(frames[2])
            reply = protocol.Reply(call_id, error=error)
        else:
            try:
                reply = protocol.decode_reply(kind, call_id, body)
                protocol.check_json(reply.value, "result")  # msgpack carries more than JSON: bytes, integer keys
            except (TypeError, protocol.ProtocolError) as error:
                reply = protocol.Reply(call_id, error=errors.InvalidResult(f"from {self.endpoint}: {error}"))
        for future in self.pending.get(call_id, ()):
            if not future.done():
                future.set_result(reply)

    def _event(self, frames: list[bytes]) -> None:
        event = zmq.utils.monitor.parse_monitor_message(frames)
        if event["event"] == zmq.EVENT_DISCONNECTED:
            # The monitor and the data travel separately: give replies sent just before the
            # connection closed a moment to land before failing the calls still waiting.
            lost = errors.Unavailable(f"connection to {self.endpoint} lost")
            asyncio.get_running_loop().call_later(DISCONNECT_GRACE, self._lost, self._waiting(), lost)
            self._state(False)
        elif event["event"] == zmq.EVENT_CONNECT_RETRIED:
            self._state(False)
        elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.refused = errors.Unauthorized(f"{self.endpoint} refused this client's key")
            self.fail_pending(self.refused)
            self._state(False)
        elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.refused = None
            self._state(True)

    def _state(self, up: bool) -> None:
        if self.up is up:
            return
        self.up = up
        if self._on_state is not None:
            try:
                self._on_state(self.endpoint, up)
            except Exception:  # a listener's bug must not stop the socket monitor
                log.exception("connection listener failed for %s", self.endpoint)

    def _lost(self, waiting: list[asyncio.Future[protocol.Reply]], error: errors.CallError) -> None:
        self.replies.read_held()
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    def _expire(self, future: asyncio.Future[protocol.Reply], wait: float) -> None:
        self.replies.read_held()  # its reply may have come while replies were held
        if not future.done():
            future.set_exception(errors.DeadlineExceeded(f"no reply from {self.endpoint} within {wait:.1f} s"))

    def _waiting(self) -> list[asyncio.Future[protocol.Reply]]:
        return [future for futures in self.pending.values() for future in futures]

    def fail_pending(self, error: errors.CallError) -> None:
        for future in self._waiting():
            if not future.done():
                future.set_exception(error)

    async def attempt(self, call: protocol.Call, wait: float) -> Any:
        """One attempt: send, then wait up to ``wait`` seconds for the reply."""
        if self.refused is not None:
            raise self.refused
        frames = _encode(call, self.max_call_size)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # A future of its own, even when the same call id is already waiting (a duplicate):
        # its deadline then fails this caller alone.
        future: asyncio.Future[protocol.Reply] = loop.create_future()
        waiting = self.pending.setdefault(call.call_id, [])
        waiting.append(future)
        timer: asyncio.TimerHandle | None = None
        try:
            await self._send(frames, future, deadline)
            # One timer per attempt; asyncio.timeout costs several objects per call.
            timer = loop.call_at(deadline, self._expire, future, wait)
            reply = await future
        finally:
            if timer is not None:
                timer.cancel()
            waiting.remove(future)
            if not waiting:
                del self.pending[call.call_id]
                if not self.pending and self.on_idle is not None:
                    self.on_idle()
        if reply.error is not None:
            raise reply.error
        return reply.value

    async def _send(self, frames: list[bytes], future: asyncio.Future[protocol.Reply], deadline: float) -> None:
        """Sends at once when connected; otherwise (IMMEDIATE) retries until connected or the deadline."""
        loop = asyncio.get_running_loop()
        deadline = min(deadline, loop.time() + self.connect_timeout)
        pause = 0.001
        while True:
            try:
                self.replies.send(frames)
                return
            except zmq.Again:
                if future.done():  # failed meanwhile, e.g. the key was refused
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise errors.Unavailable(f"no connection to {self.endpoint} (is the handler running?)") from None
                await asyncio.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.05)
            except zmq.ZMQError as error:  # closed meanwhile (the client is closing)
                raise errors.Unavailable(f"cannot send to {self.endpoint}: {error}") from None

    async def close(self) -> None:
        self.fail_pending(errors.Unavailable("client closed"))
        self.replies.socket.disable_monitor()
        self.events.close()
        self.replies.close()


def _encode(call: protocol.Call, max_size: int) -> list[bytes]:
    """The call's frames, checked before anything is sent: what a handler would refuse fails here,
    on this call alone."""
    try:
        protocol.check_json(call.params, "params")
        frames = protocol.encode_call(call)
    except (TypeError, ValueError, OverflowError) as error:
        raise errors.InvalidParams(str(error)) from None
    size = sum(len(frame) for frame in frames)
    if size > max_size:
        raise errors.MessageTooLarge(f"call to {call.method} is {size} bytes, more than the {max_size} a call may be")
    return frames


def context_for(handlers: int) -> zmq.Context[Any]:
    """A context for talking to many handlers: three ZeroMQ sockets each (the DEALER and both ends
    of its monitor), beyond libzmq's default limit of 1,023 sockets per context."""
    context: zmq.Context[Any] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, max(1024, 3 * handlers + 64))
    return context


class Client:
    """Calls methods on handlers. Use one per process; it is cheap to share across tasks."""

    def __init__(self, settings: ClientSettings | None = None, *, context: zmq.Context[Any] | None = None) -> None:
        self.settings = settings or ClientSettings()
        self._context: zmq.Context[Any] = context or zmq.Context.instance()
        self._connections: dict[str, _Connection] = {}
        self._curves: dict[str, security.CurveClient | None] = {}
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self._holds = 0
        self.on_connection: Callable[[str, bool], None] | None = None
        """Told when a connection to an endpoint is made (True) or lost (False): a prompt sign of a pod
        that went away or came back, long before a probe interval ends."""

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connection(self, endpoint: str) -> _Connection:
        connection = self._connections.get(endpoint)
        if connection is None:
            if self._closed:  # a retry still running at shutdown must not open a connection again
                raise errors.Unavailable("client closed")
            try:
                connection = _Connection(
                    self._context, endpoint, self._settings_for(endpoint), on_state=self._connection_state
                )
            except zmq.ZMQError as error:  # a malformed endpoint: fails the call, like any unreachable handler
                raise errors.Unavailable(f"cannot connect to {endpoint!r}: {error}") from None
            if self._holds:
                connection.replies.hold()
            self._connections[endpoint] = connection
        return connection

    def hold_replies(self) -> None:
        """Sends go before replies until the matching ``release_replies``: replies that arrive meanwhile
        wait in their sockets, so a burst of calls goes out before any of its runs resumes and records.

        A call whose deadline comes during a hold reads its connection's replies first; holds are counted,
        so several bursts in one process share them.
        """
        self._holds += 1
        if self._holds == 1:
            for connection in self._connections.values():
                connection.replies.hold()

    def release_replies(self) -> None:
        """Ends one ``hold_replies``; the replies that waited are handled once every hold has ended."""
        if self._holds == 0:
            return
        self._holds -= 1
        if self._holds == 0:
            for connection in self._connections.values():
                connection.replies.release()

    def _connection_state(self, endpoint: str, up: bool) -> None:
        if self.on_connection is not None:
            self.on_connection(endpoint, up)

    def is_down(self, endpoint: str) -> bool:
        """Whether the connection to ``endpoint`` is known to be lost (or was never made, though tried)."""
        connection = self._connections.get(endpoint)
        return connection is not None and connection.up is False

    def _settings_for(self, endpoint: str) -> ClientSettings:
        if endpoint in self._curves:
            return dataclasses.replace(self.settings, curve=self._curves[endpoint])
        return self.settings

    async def set_curve(self, endpoint: str, curve: security.CurveClient | None) -> None:
        """CURVE keys for one endpoint (each Handler has its own); reconnects if they changed."""
        if endpoint in self._curves and self._curves[endpoint] == curve:
            return
        self._curves[endpoint] = curve
        await self.disconnect(endpoint)

    async def call(
        self,
        endpoint: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy = NO_RETRY,
        call_id: bytes | None = None,
        schedule: str | None = None,
        scheduled_time: str | None = None,
        rng: random.Random | None = None,
    ) -> Any:
        """Calls ``method`` and returns its result, or raises the CallError it ended with.

        ``timeout`` bounds each attempt. Retryable errors are retried per
        ``retry`` with the same call id. The raised error's ``attempts`` says
        how many were made.
        """
        call_id = call_id or protocol.new_call_id()
        payload = dict(params or {})
        connection = self._connection(endpoint)
        attempt = 1
        while True:
            call = protocol.Call(
                call_id=call_id,
                method=method,
                params=payload,
                timeout_ms=max(1, int(timeout * 1000)),
                attempt=attempt,
                schedule=schedule,
                scheduled_time=scheduled_time,
            )
            try:
                return await connection.attempt(call, timeout + REPLY_GRACE)
            except errors.CallError as error:
                error.attempts = attempt
                if not error.retryable or attempt >= retry.max_attempts:
                    raise
                rng = rng or random.Random(call_id)  # only when retrying: it costs a few µs per call
                delay = retry.delay(attempt, rng)
                log.debug(
                    "%s on %s failed (%s), attempt %d; retrying in %.2f s",
                    method,
                    endpoint,
                    error,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1

    async def attempt(self, endpoint: str, call: protocol.Call) -> Any:
        """One attempt of ``call``, for callers that run their own retry loop (the scheduling engine)."""
        return await self._connection(endpoint).attempt(call, call.timeout_ms / 1000 + REPLY_GRACE)

    async def cancel(self, endpoint: str, call_id: bytes, *, timeout: float = 5.0) -> bool:
        """Asks the handler to cancel a running call; True if it was running."""
        result = await self.call(endpoint, "sys.cancel", {"call_id": call_id.hex()}, timeout=timeout)
        return bool(result["cancelled"])

    def retire(self, endpoint: str) -> None:
        """Closes the connection to an endpoint no longer in use (a pod gone from its Service) once the
        calls in flight on it are answered: a terminating pod finishes them, and its replies still arrive."""
        connection = self._connections.get(endpoint)
        if connection is None:
            return

        def close() -> None:
            if self._connections.get(endpoint) is connection:
                del self._connections[endpoint]
                task = asyncio.get_running_loop().create_task(connection.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

        if connection.pending:
            connection.on_idle = close
        else:
            close()

    async def disconnect(self, endpoint: str) -> None:
        """Closes the connection to a handler that is gone; calls in flight fail Unavailable."""
        connection = self._connections.pop(endpoint, None)
        if connection is not None:
            await connection.close()

    async def close(self) -> None:
        self._closed = True
        for endpoint in list(self._connections):
            with contextlib.suppress(Exception):
                await self.disconnect(endpoint)
        await asyncio.gather(*self._closing, return_exceptions=True)
