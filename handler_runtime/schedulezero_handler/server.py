"""Serving a Handler on a ZeroMQ ROUTER socket.

The receive loop only parses and dispatches: every call, ``sys.*`` verbs
included, runs in its own task, so a slow method or hook never delays the
next message. Nothing a peer sends can stop the loop: a malformed envelope is
dropped and counted, a bad request gets an error reply.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import enum
import functools
import json
import logging
import pathlib
import time
import traceback
from typing import Any, TextIO

import zmq
import zmq.asyncio

import schedulezero_handler
from schedulezero_handler import (
    context,
    dedup,
    errors,
    health,
    listeners,
    metrics,
    params,
    protocol,
    pump,
    security,
    sleep,
)
from schedulezero_handler import handler as handler_

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    ACTIVE = "active"
    SLEEPING = "sleeping"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """How a handler is served; the ``schedulezero handler`` options map onto these."""

    bind: str = "tcp://0.0.0.0:5555"
    """ZeroMQ endpoint to bind; port 0 picks a free port (see ``Server.endpoint``)."""
    idle_timeout: float = 300.0
    """Seconds without calls (``sys.*`` verbs do not count) before sleeping; 0 never sleeps."""
    max_concurrent_calls: int = 64
    """Calls running at once; more are answered ``Busy``. Also the worker threads for sync methods."""
    max_message_size: int = protocol.MAX_MESSAGE_SIZE
    """Largest call accepted; a larger one is answered ``MessageTooLarge``. ZeroMQ drops the
    connection of a peer that sends more than ``protocol.TRANSPORT_FACTOR`` times this."""
    max_reply_size: int = protocol.MAX_REPLY_SIZE
    """Largest reply sent; a larger result is answered ``MessageTooLarge`` instead."""
    drain_timeout: float = 30.0
    """On stop, how long in-flight calls may finish before they are cancelled."""
    drain_delay: float = 0.0
    """On stop, how long calls are still taken after ``/readyz`` starts failing, before the drain.

    Behind a Service, callers learn that a pod is going from its EndpointSlice,
    a moment after the pod itself knows: calls sent meanwhile are still run
    rather than refused. A few seconds (the readiness period) in a cluster."""
    close_grace: float = 0.5
    """On stop, after the last in-flight call's reply, how long to keep the connections open.

    A reply that reaches a client just before the connection closes can be lost
    unread: a DEALER connected with ZMQ_IMMEDIATE (the client's) drops its pipe on
    disconnect. Seen under load; the grace lets clients read their last replies."""
    reply_ttl: float = 600.0
    """How long a finished reply is kept for duplicates of its call id."""
    reply_cache_size: int = 10_000
    """How many finished replies are kept for duplicates at most; 0 keeps none, so that every second
    delivery runs the method again (a test of the callers' own exactly-once)."""
    reply_cache_bytes: int = 64 * 1024 * 1024
    """How many bytes of finished replies are kept at most; past it the largest go first."""
    http_port: int | None = None
    """Port of the ``/healthz`` and ``/readyz`` endpoints; None serves none."""
    http_host: str = "0.0.0.0"
    """Address of the health endpoints."""
    curve: security.CurveServer | None = None
    """CurveZMQ keys; None serves in clear text to any client."""
    journal: pathlib.Path | None = None
    """A file to which every method call's delivery is appended as a JSON line (call id, attempt, sender,
    Schedule, nominal time, and how it was answered): an audit of who delivered what, read by tests that
    count deliveries rather than executions. None keeps no journal."""


UNKNOWN_METHOD = "<unknown>"
"""The method label of calls to methods the handler does not have: callers choose those names."""


@dataclasses.dataclass
class _Running:
    task: asyncio.Task[list[bytes]]
    waiters: list[bytes]
    """ROUTER identities waiting for the reply: the caller and any duplicates that joined."""
    thread: asyncio.Future[Any] | None = None
    """A sync method's worker thread, which outlives the task when the call overruns its deadline."""


class Server:
    """Serves one Handler instance until ``stop``."""

    def __init__(
        self,
        handler: handler_.Handler,
        settings: ServerSettings | None = None,
        *,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.handler = handler
        self.settings = settings or ServerSettings()
        self.methods = handler_.exposed_methods(handler)
        self.state = State.ACTIVE
        self.stats = metrics.CallStats()
        self.process = metrics.ProcessMetrics()
        self.ready = False
        self.stopping = False
        self.draining = False
        self._context = context or zmq.asyncio.Context.instance()
        self._pump: pump.SocketPump | None = None
        self._running: dict[bytes, _Running] = {}
        self._replies = dedup.ReplyCache(
            ttl=self.settings.reply_ttl,
            max_entries=self.settings.reply_cache_size,
            max_bytes=self.settings.reply_cache_bytes,
        )
        self.overrun = 0
        """Sync calls past their deadline whose threads still run: Python cannot stop a thread."""
        self._state_lock = asyncio.Lock()
        self._last_activity = time.monotonic()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.settings.max_concurrent_calls, thread_name_prefix="schedulezero-call"
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
        self._authenticator: security.KeyDirectoryAuthenticator | None = None
        self._http: health.HealthServer | None = None
        self._journal: TextIO | None = None
        self.endpoint = ""

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Binds, runs ``on_start``, and starts serving; ready once it returns."""
        socket: zmq.Socket[bytes] = zmq.Socket(self._context, zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 1000)  # let the last replies out on stop
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.MAXMSGSIZE, protocol.TRANSPORT_FACTOR * self.settings.max_message_size)
        socket.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
        if self.settings.curve is not None:
            self._authenticator = security.KeyDirectoryAuthenticator(self._context, self.settings.curve)
            await self._authenticator.start()
            curve_listeners = listeners.CurveListeners(
                socket, bind=self.settings.bind, key_file=self.settings.curve.secret_key_file
            )
            self.endpoint = curve_listeners.start()
            self._spawn(self._follow_keys(curve_listeners, self.settings.curve.reload_interval))
        else:
            socket.bind(self.settings.bind)
            self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.settings.http_port is not None:
            self._http = health.HealthServer(self, host=self.settings.http_host, port=self.settings.http_port)
            self._http.start(asyncio.get_running_loop())
        await self.handler.on_start()
        if self.settings.journal is not None:
            # Line-buffered appends: one small write per delivery to the page cache, readable at once.
            self._journal = self.settings.journal.open("a", buffering=1, encoding="utf-8")
        self._pump = pump.SocketPump(
            socket, self._receive, peer_property="User-Id" if self._authenticator is not None else None
        )
        if self.settings.idle_timeout > 0:
            self._spawn(self._idle_watch())
        self.ready = True
        log.debug("serving %s on %s (%d methods)", type(self.handler).__name__, self.endpoint, len(self.methods))

    @property
    def stuck(self) -> bool:
        """Every call slot is taken by a thread past its deadline: only a restart frees them."""
        return self.overrun >= self.settings.max_concurrent_calls

    async def stop(self, *, drain_timeout: float | None = None) -> None:
        """Stops accepting calls, lets in-flight ones finish, runs ``on_stop``, closes."""
        if self.stopping:
            await self._stopped.wait()
            return
        self.stopping = True
        self.ready = False
        if self.settings.drain_delay > 0:
            log.info("not ready; taking calls for %.1f s more, then draining", self.settings.drain_delay)
            await asyncio.sleep(self.settings.drain_delay)
        self.draining = True
        grace = self.settings.drain_timeout if drain_timeout is None else drain_timeout
        pending = [running.task for running in self._running.values()]
        if pending:
            log.info("draining %d in-flight calls (up to %.0f s)", len(pending), grace)
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel("handler stopping")
            if late:
                await asyncio.wait(late)
            if self.overrun:
                log.warning("%d sync calls still run past their deadline; they end with the process", self.overrun)
            await asyncio.sleep(self.settings.close_grace)  # their replies are queued: let them be read
        try:
            await self.handler.on_stop()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._pump is not None:
                self._pump.close(linger=1000)  # let the last replies out
            if self._authenticator is not None:
                self._authenticator.stop()
            if self._http is not None:
                self._http.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            self._stopped.set()

    async def _follow_keys(self, curve_listeners: listeners.CurveListeners, interval: float) -> None:
        """The key pair files re-read, as a mounted Secret changes: a rotation's listeners come and go."""
        while True:
            await asyncio.sleep(interval)
            try:
                await curve_listeners.refresh()
            except zmq.ZMQError as error:
                log.warning("key pair files: %s", error)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- receiving ----------------------------------------------------------------

    def _receive(self, frames: list[bytes]) -> None:
        try:
            self._dispatch(frames[0], frames[1:])
        except Exception:  # a bug here must not stop the handler
            self.stats.dropped_messages += 1
            log.exception("dropping a message that could not be dispatched")

    def _dispatch(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            kind, call_id, header, body = protocol.split(frames, max_size=self.settings.max_message_size)
        except protocol.ProtocolError as error:
            self.stats.dropped_messages += 1
            log.debug("dropped a malformed message: %s", error)
            return
        except errors.CallError as error:  # the call id is known: say what is wrong instead of staying silent
            self._reply_now(identity, protocol.encode_error(bytes(frames[2]), error))
            return
        if self._authenticator is not None and not self._authenticator.accepts(self._pump.peer if self._pump else None):
            revoked = errors.Unauthorized("this client's key is no longer authorized")
            self._reply_now(identity, protocol.encode_error(call_id, revoked))
            return
        if kind is not protocol.Kind.CALL:
            self._reply_now(
                identity, protocol.encode_error(call_id, errors.BadRequest(f"{kind.name} is not a request"))
            )
            return
        try:
            call = protocol.decode_call(call_id, header, body)
        except errors.CallError as error:
            self._reply_now(identity, protocol.encode_error(call_id, error))
            return
        if call.method in protocol.SYS_VERBS:
            self._spawn(self._answer(identity, call.call_id, self._system(call)))
            return
        self._accept(identity, call)

    def _accept(self, identity: bytes, call: protocol.Call) -> None:
        """Starts a method call, or answers a duplicate, or refuses it."""
        stored = self._replies.get(call.call_id)
        if stored is not None and (stored.succeeded or call.attempt <= stored.attempt):
            self._delivered(call, "cached")
            self._reply_now(identity, stored.frames)
            return
        running = self._running.get(call.call_id)
        if running is not None:
            self._delivered(call, "joined")
            running.waiters.append(identity)
            return
        refusal = self._refusal(call)
        if refusal is not None:
            self._delivered(call, f"refused:{refusal.type}")
            self.stats.finished(call.method if call.method in self.methods else UNKNOWN_METHOD, refusal.type)
            self._reply_now(identity, protocol.encode_error(call.call_id, refusal))
            return
        self._delivered(call, "run")
        method = self.methods[call.method]
        self.stats.in_flight += 1
        self._last_activity = time.monotonic()
        task = self._spawn(self._execute(call, method))
        self._running[call.call_id] = _Running(task, [identity])
        task.add_done_callback(functools.partial(self._finished, call))

    def _delivered(self, call: protocol.Call, answer: str) -> None:
        """Counts a second delivery, logs who sent it, and journals every delivery when asked to."""
        if answer in ("cached", "joined"):
            self.stats.duplicates[call.method] += 1
            log.debug(
                "%s (call %s, attempt %d) from %s: a duplicate, %s",
                call.method, call.call_id.hex(), call.attempt, call.sender or "an unnamed sender", answer,
            )  # fmt: skip
        if self._journal is not None:
            entry = {
                "at": time.time(),
                "call": call.call_id.hex(),
                "method": call.method,
                "attempt": call.attempt,
                "sender": call.sender,
                "resent": call.resent,
                "schedule": call.schedule,
                "scheduled": call.scheduled_time,
                "answer": answer,
            }
            self._journal.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def _refusal(self, call: protocol.Call) -> errors.CallError | None:
        if self.draining:
            return errors.Unavailable("handler is shutting down")
        if call.method.startswith(protocol.RESERVED_PREFIX):
            return errors.MethodNotFound(f"{call.method!r} is not a known system verb")
        method = self.methods.get(call.method)
        if method is None:
            return errors.MethodNotFound(
                f"no exposed method {call.method!r} (exposed: {', '.join(sorted(self.methods))})"
            )
        try:
            params.check(call.params, method.params)
        except errors.InvalidParams as error:
            return error
        if self.stats.in_flight >= self.settings.max_concurrent_calls:
            return errors.Busy(f"{self.stats.in_flight} calls in flight, the maximum")
        return None

    # -- running a method ---------------------------------------------------------

    async def _execute(self, call: protocol.Call, method: handler_.Method) -> list[bytes]:
        """Runs the method within its deadline; always returns reply frames."""
        try:
            if self.state is State.SLEEPING:
                await self.wake()
            context.set_current(
                context.CallInfo(call.call_id.hex(), call.method, call.attempt, call.schedule, call.scheduled_time)
            )
            async with asyncio.timeout(call.timeout_ms / 1000):
                if method.is_async:
                    value = await method.func(**call.params)
                else:
                    value = await asyncio.shield(self._start_thread(call, method))
            return self._result(call, value)
        except TimeoutError:
            error: errors.CallError = errors.DeadlineExceeded(
                f"{call.method} did not finish within {call.timeout_ms} ms"
            )
        except asyncio.CancelledError:
            # Only this server cancels calls (sys.cancel, or stop after the drain timeout).
            error = errors.Cancelled(f"{call.method} was cancelled")
        except Exception as raised:
            error = self._failure(call, raised)
        return protocol.encode_error(call.call_id, error)

    def _start_thread(self, call: protocol.Call, method: handler_.Method) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        in_context = functools.partial(contextvars.copy_context().run, method.func, **call.params)
        thread = loop.run_in_executor(self._executor, in_context)
        self._running[call.call_id].thread = thread
        return thread

    def _result(self, call: protocol.Call, value: Any) -> list[bytes]:
        try:
            protocol.check_json(value, "result")
            frames = protocol.encode_result(call.call_id, value)
        except (TypeError, ValueError, OverflowError) as error:
            raise errors.InvalidResult(f"{call.method} returned a value JSON cannot carry: {error}") from None
        size = sum(len(frame) for frame in frames)
        if size > self.settings.max_reply_size:
            raise errors.MessageTooLarge(
                f"{call.method} returned {size} bytes, more than the {self.settings.max_reply_size} a reply may carry"
            )
        return frames

    def _failure(self, call: protocol.Call, raised: Exception) -> errors.CallError:
        if isinstance(raised, errors.CallError):  # a method may answer Busy or Unavailable itself
            return raised
        log.error("%s (call %s) raised", call.method, call.call_id.hex(), exc_info=raised)
        return _handler_error(raised)

    def _finished(self, call: protocol.Call, task: asyncio.Task[list[bytes]]) -> None:
        frames = (
            task.result()
            if not task.cancelled()
            else protocol.encode_error(call.call_id, errors.Cancelled(f"{call.method} was cancelled"))
        )
        self.stats.finished(call.method, _outcome(frames))
        running = self._running[call.call_id]
        waiters, running.waiters = running.waiters, []
        for identity in waiters:
            self._reply_now(identity, frames)
        if running.thread is not None and not running.thread.done():
            # Still running in its thread: the call stays in flight, and resends and retries of its
            # id join it rather than run it a second time beside it.
            self.overrun += 1
            log.warning("%s (call %s) overran its deadline; its thread still runs", call.method, call.call_id.hex())
            running.thread.add_done_callback(functools.partial(self._thread_ended, call))
            return
        self._settle(call, frames)

    def _thread_ended(self, call: protocol.Call, thread: asyncio.Future[Any]) -> None:
        """An overrun call's thread ended: its outcome becomes the call's reply, for whoever joined since."""
        self.overrun -= 1
        try:
            frames = self._result(call, thread.result())
        except Exception as raised:
            frames = protocol.encode_error(call.call_id, self._failure(call, raised))
        for identity in self._running[call.call_id].waiters:
            self._reply_now(identity, frames)
        self._settle(call, frames)

    def _settle(self, call: protocol.Call, frames: list[bytes]) -> None:
        self.stats.in_flight -= 1
        self._last_activity = time.monotonic()
        self._replies.put(call.call_id, dedup.Reply(frames, attempt=call.attempt))
        del self._running[call.call_id]

    def _reply_now(self, identity: bytes, frames: list[bytes]) -> None:
        """Queues a reply without waiting; a caller that has gone away is counted, not an error."""
        assert self._pump is not None
        try:
            self._pump.send([identity, *frames])
        except zmq.ZMQError as error:
            self.stats.dropped_messages += 1
            log.debug("reply not delivered: %s", error)

    async def _answer(self, identity: bytes, call_id: bytes, work: Any) -> None:
        try:
            value = await work
            frames = protocol.encode_result(call_id, value)
        except errors.CallError as error:
            frames = protocol.encode_error(call_id, error)
        except Exception as raised:
            frames = protocol.encode_error(call_id, _handler_error(raised))
        self._reply_now(identity, frames)

    # -- sleep --------------------------------------------------------------------

    async def sleep(self) -> None:
        """Runs ``on_sleep`` and returns memory to the OS; calls in flight are refused as Busy."""
        async with self._state_lock:
            if self.state is State.SLEEPING:
                return
            if self.stats.in_flight:
                raise errors.Busy(f"cannot sleep with {self.stats.in_flight} calls in flight")
            await self.handler.on_sleep()
            self._replies.shrink()
            await asyncio.get_running_loop().run_in_executor(None, sleep.release_memory)
            self.state = State.SLEEPING
            log.info("sleeping")

    async def wake(self) -> None:
        async with self._state_lock:
            if self.state is State.ACTIVE:
                return
            await self.handler.on_wake()
            self.state = State.ACTIVE
            self._last_activity = time.monotonic()
            log.info("awake")

    async def _idle_watch(self) -> None:
        idle_timeout = self.settings.idle_timeout
        while True:
            idle = time.monotonic() - self._last_activity
            if self.state is State.ACTIVE and not self.stats.in_flight and idle >= idle_timeout:
                try:
                    await self.sleep()
                except errors.Busy:
                    pass
                except Exception:
                    log.exception("on_sleep failed; staying active")
                    self._last_activity = time.monotonic()
            await asyncio.sleep(max(0.05, min(idle_timeout - idle if idle < idle_timeout else idle_timeout, 5.0)))

    # -- sys.* verbs --------------------------------------------------------------

    async def _system(self, call: protocol.Call) -> Any:
        verb = call.method
        if verb == "sys.health":
            return {
                "status": "ok",
                "state": str(self.state),
                "version": self.handler.version,
                "ready": self.ready,
                "overrun": self.overrun,
            }
        if verb == "sys.describe":
            return {
                "handler": type(self.handler).__qualname__,
                "version": self.handler.version,
                "runtime": schedulezero_handler.__version__,
                "methods": [self.methods[name].describe() for name in sorted(self.methods)],
            }
        if verb == "sys.metrics":
            return {
                **self.process.snapshot(),
                "state": str(self.state),
                "calls": self.stats.by_method(),
                "in_flight": self.stats.in_flight,
                "dropped_messages": self.stats.dropped_messages,
                "duplicate_calls": dict(self.stats.duplicates),
            }
        if verb == "sys.sleep":
            await self.sleep()
            return {"state": str(self.state)}
        if verb == "sys.wake":
            await self.wake()
            return {"state": str(self.state)}
        if verb == "sys.cancel":
            return {"cancelled": self._cancel(call.params)}
        raise errors.MethodNotFound(f"unknown system verb {verb!r}")

    def _cancel(self, params: dict[str, Any]) -> bool:
        raw = params.get("call_id")
        try:
            call_id = bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError:
            call_id = b""
        if len(call_id) != protocol.CALL_ID_SIZE:
            raise errors.InvalidParams("parameter 'call_id': expected the call id as 32 hex digits")
        running = self._running.get(call_id)
        if running is None or running.task.done():
            return False
        return running.task.cancel("sys.cancel")  # a sync method's thread runs on (see _finished)


def _outcome(frames: list[bytes]) -> str:
    if frames[1] == protocol.Kind.RESULT.value:
        return "ok"
    body = protocol.unpack(frames[4], "error")
    return str(body.get("type", "error")) if isinstance(body, dict) else "error"


_RUNTIME_DIR = str(pathlib.Path(__file__).parent)
MAX_ERROR_MESSAGE = 1000
"""Characters of an exception's text sent to callers; the whole traceback goes to the handler's log."""


def _handler_error(raised: BaseException) -> errors.HandlerError:
    """The exception's type and first line, and where in the handler's own code it was raised.

    One line, with no paths: it ends up in a Schedule's status and in Events,
    which people other than the handler's author read.
    """
    text = str(raised).strip().splitlines()
    message = f"{type(raised).__name__}: {text[0] if text else ''}".rstrip(": ")
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[:MAX_ERROR_MESSAGE] + "…"
    frames = [
        frame for frame in traceback.extract_tb(raised.__traceback__) if not frame.filename.startswith(_RUNTIME_DIR)
    ]
    if frames:
        last = frames[-1]
        message += f" (at {pathlib.Path(last.filename).name}:{last.lineno} in {last.name})"
    return errors.HandlerError(message)
