"""Properties of the wire between Client and handler, checked with hypothesis over real ZeroMQ sockets.

What a peer sends is untrusted and what a method returns is arbitrary, so these
tests generate both and hold the runtime to the promises the README and the
module docstrings make: nothing a peer sends stops a handler, a caller that can
be answered is answered (an ERROR, not silence), a call either round-trips its
JSON value or fails with a CallError that says why, one bad call never takes
down the connection other calls share, and memory and metric labels stay
bounded whatever callers send.

Real handler processes (``tests.support.handlers:ProbeHandler``) are used where
the property is about a process (staying up, its memory, its metrics); a
``Server`` of ``ShapeHandler`` served in this process, on a real TCP socket,
where a test needs to choose what a method returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

import msgpack
import psutil
import pytest
import zmq
import zmq.asyncio
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from schedulezero_handler import Handler, errors, expose, protocol
from schedulezero_handler import client as client_
from schedulezero_handler import server as server_
from tests.support import processes

T = TypeVar("T")

PROBE = "tests.support.handlers:ProbeHandler"
MIB = 1024 * 1024
MAX = protocol.MAX_MESSAGE_SIZE
CLIENT_LIMIT = client_.ClientSettings().max_message_size
SIZE_WORDS = re.compile(r"\d|size|limit|large|max|bytes", re.IGNORECASE)
"""What an error about a message's size must mention: the size or the limit it broke."""

CHEAP = settings(max_examples=200, deadline=None, database=None)
UNSHRUNK = (Phase.explicit, Phase.generate)
"""For tests whose every example costs seconds: the explicit examples (the boundaries) come first and are
the minimal inputs; shrinking a generated failure would cost minutes for little."""


# -- an event loop that outlives examples ---------------------------------------------------------------------------


class Loop:
    """One event loop for the module, so that the long-lived Client and the in-process Server outlive examples.

    Each example runs its coroutine with a time bound: a property that would hang
    fails as a hang instead of stalling the suite.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        try:
            return self.loop.run_until_complete(asyncio.wait_for(work, timeout))
        except TimeoutError:
            raise AssertionError(f"no outcome within {timeout} s: the call hung") from None

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


async def outcome(call: Awaitable[T]) -> T | Exception:
    """The call's value or the exception it raised, so that a test can judge either."""
    try:
        return await call
    except Exception as error:
        return error


def describe(value: Any) -> str:
    """An outcome for an assertion message, short even when the value is a megabyte."""
    return f"{type(value).__name__}: {value}" if isinstance(value, Exception) else f"{value!r:.60}"


# -- a handler whose results the test chooses -----------------------------------------------------------------------


class ShapeHandler(Handler):
    """Returns what the test sets, echoes any params, and makes results of any size."""

    result: Any = None

    @expose
    async def give(self) -> Any:
        """Returns ``self.result``, set by the test: results no caller could send as params."""
        return self.result

    @staticmethod
    @expose
    async def echo_params(**params: Any) -> dict[str, Any]:
        """Every param back; a staticmethod so that even a param named ``self`` is a param."""
        return params

    @expose
    async def echo(self, value: Any = None) -> Any:
        """The liveness check every test ends with, as on ProbeHandler."""
        return value

    @expose
    async def blob(self, size: int) -> str:
        """A result of ``size`` bytes, beyond what a caller could ask for in params."""
        return "x" * size

    @expose
    async def slow(self, seconds: float, key: str) -> str:
        """Keeps a call in flight beside one that fails, to see whether it survives."""
        await asyncio.sleep(seconds)
        return key


@dataclasses.dataclass
class InProcess:
    """A ShapeHandler served on a real TCP socket, on the module's event loop."""

    server: server_.Server
    handler: ShapeHandler

    @property
    def endpoint(self) -> str:
        return self.server.endpoint


# -- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def context() -> Iterator[zmq.Context[Any]]:
    """The context of fresh clients and raw peers, apart from the long-lived Client's."""
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path_factory.mktemp("wire")) as handler:
        yield handler


@pytest.fixture(scope="module")
def client(loop: Loop) -> Iterator[client_.Client]:
    """The long-lived Client every test shares: what one test does to its connections, later tests see."""
    ctx: zmq.Context[Any] = zmq.Context()
    shared = client_.Client(context=ctx)
    yield shared
    loop.run(shared.close())
    ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def shapes(loop: Loop) -> Iterator[InProcess]:
    async def start() -> InProcess:
        handler = ShapeHandler()
        settings_ = server_.ServerSettings(bind="tcp://127.0.0.1:0", idle_timeout=0)
        server = server_.Server(handler, settings_, context=zmq.asyncio.Context())
        await server.start()
        return InProcess(server, handler)

    served = loop.run(start())
    yield served
    loop.run(served.server.stop(drain_timeout=0), timeout=30)


async def alive(client: client_.Client, endpoint: str, method: str = "echo") -> None:
    """A normal call succeeds: the check every property ends with."""
    assert await client.call(endpoint, method, {"value": "alive"}, timeout=5) == "alive"


async def alive_fresh(context: zmq.Context[Any], endpoint: str, method: str = "echo") -> None:
    async with client_.Client(context=context) as fresh:
        await alive(fresh, endpoint, method)


# -- 1. frames from a raw DEALER ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Deep:
    """msgpack nested ``depth`` levels (past msgpack's limit of 1024 from 1025 on), kept short in reports."""

    depth: int
    container: str = "array"

    def build(self) -> bytes:
        level = b"\x91" if self.container == "array" else b"\x81\xa1k"
        return level * self.depth + b"\xc0"


@dataclasses.dataclass(frozen=True)
class Big:
    """A frame of ``size`` bytes (around the 1 MiB limit), kept short in reports."""

    size: int
    fill: int = 0x78

    def build(self) -> bytes:
        return bytes([self.fill]) * self.size


Frame = bytes | Deep | Big


def build(frames: list[Frame]) -> list[bytes]:
    return [frame if isinstance(frame, bytes) else frame.build() for frame in frames]


SAFE_METHODS = st.sampled_from(["echo", "add", "nope", "helper", "sys.health", "sys.describe", "sys.metrics"])
"""Methods a garbage call may name: none that sleeps, blocks the loop or puts the handler to sleep."""

msgpack_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
msgpack_values = st.recursive(
    msgpack_leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5) | st.binary(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)
headers = st.fixed_dictionaries(
    {"method": SAFE_METHODS | st.text(max_size=10), "timeout_ms": st.integers(-(2**63), 2**64 - 1)},
    optional={
        "attempt": st.integers(-3, 2**40) | st.text(max_size=3),
        "schedule": msgpack_values,
        "scheduled_time": msgpack_values,
    },
)


def truncated(packed: bytes, cut: int) -> bytes:
    return packed[: max(0, len(packed) - cut)]


invalid_msgpack = (
    st.binary(max_size=20).map(lambda tail: b"\xc1" + tail)  # 0xc1 is never used by msgpack
    | st.builds(truncated, headers.map(protocol.pack), st.integers(1, 8))
    | st.builds(lambda value, tail: protocol.pack(value) + tail, msgpack_values, st.binary(min_size=1, max_size=5))
)
deep = st.builds(Deep, st.integers(1025, 4000), st.sampled_from(["array", "map"]))
blobs: st.SearchStrategy[Frame] = (
    headers.map(protocol.pack)
    | msgpack_values.map(protocol.pack)
    | invalid_msgpack
    | st.binary(max_size=40)
    | st.builds(Deep, st.integers(1, 4000), st.sampled_from(["array", "map"]))
)
versions = st.sampled_from([b"SZ1", b"SZ2", b"SZ0", b"", b"sz1", b"SZ1\x00"]) | st.binary(max_size=5)
kinds = st.sampled_from([b"CALL", b"RESULT", b"ERROR", b"PING", b"call", b""]) | st.binary(max_size=8)
call_ids = st.binary(min_size=16, max_size=16) | st.binary(max_size=40)


@st.composite
def envelopes(draw: st.DrawFn) -> list[Frame]:
    """Five frames close to a real message, then maybe some frames dropped or added."""
    frames: list[Frame] = [draw(versions), draw(kinds), draw(call_ids), draw(blobs), draw(blobs)]
    if draw(st.booleans()):
        del frames[draw(st.integers(0, 4)) :]
    frames.extend(draw(st.lists(st.binary(max_size=8), max_size=2)))
    return frames or [b""]


@st.composite
def oversized(draw: st.DrawFn) -> list[Frame]:
    """A message around the 1 MiB limit: one big frame, or frames each under it that add up to more."""
    size = draw(st.integers(MAX - 64, MAX + 64) | st.just(2 * MIB))
    header = protocol.pack({"method": "echo", "timeout_ms": 5000})
    where = draw(st.sampled_from(["body", "header", "version", "call_id", "split", "extra"]))
    frames: list[Frame] = [b"SZ1", b"CALL", os.urandom(16), header, protocol.pack({})]
    if where == "split":
        frames[3:] = [Big(size // 2), Big(size - size // 2)]
    elif where == "extra":
        frames.append(Big(size))
    else:
        frames[["version", "kind", "call_id", "header", "body"].index(where)] = Big(size)
    return frames


garbage = st.lists(st.binary(max_size=64), min_size=1, max_size=8) | envelopes() | oversized()


class RawPeer:
    """A bare DEALER, to send what no Client would, and see every reply it gets."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.socket: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.socket.close(linger=0)

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def ping(self, *, expect: bytes | None = None, timeout: float = 3.0, settle: float = 0.2) -> list[list[bytes]]:
        """Sends ``sys.health``; returns every reply received until it is answered (and ``expect``'s reply).

        A handler reads one connection in order, so once the ping is answered the
        messages sent before it have been handled; if the reply to ``expect`` has not
        come by then, ``settle`` more seconds leave time for one sent after the ping's.
        """
        call_id = os.urandom(16)
        self.send(protocol.encode_call(protocol.Call(call_id=call_id, method="sys.health", params={}, timeout_ms=5000)))
        replies: list[list[bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            answered = {bytes(reply[2]) for reply in replies if len(reply) > 2}
            if call_id in answered and (expect is None or expect in answered):
                return replies
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(int(remaining * 1000) + 1):
                if call_id in answered:
                    return replies
                raise AssertionError(f"the handler did not answer a ping within {timeout} s; got {replies!r:.300}")
            frames = self.socket.recv_multipart()
            replies.append(frames)
            if frames[2:3] == [call_id]:
                deadline = min(deadline, time.monotonic() + settle)


SENDER = """
import sys, msgpack, zmq
frames = msgpack.unpackb(sys.stdin.buffer.read())
context = zmq.Context()
dealer = context.socket(zmq.DEALER)
dealer.connect(sys.argv[1])
dealer.send_multipart(frames)
dealer.close(linger=2000)
context.term()
"""


def send_from_another_process(endpoint: str, frames: list[bytes]) -> None:
    """Sends a message with a frame over the handler's limit from a process of its own.

    The handler's ZeroMQ cuts such a connection as soon as it reads the frame's size,
    and a DEALER whose connection is cut while it is still sending a multipart message
    can abort its whole process (libzmq's errno_assert in session_base_t::clean_pipes,
    zeromq/libzmq#3442). That is the sender's problem, not the property under test, so
    the sender is disposable and its exit status is not judged.
    """
    subprocess.run(
        [sys.executable, "-c", SENDER, endpoint], input=msgpack.packb(frames), capture_output=True, timeout=30
    )


@CHEAP
@given(frames=garbage)
def test_any_frames_leave_the_handler_serving(
    loop: Loop, context: zmq.Context[Any], probe: processes.HandlerProcess, client: client_.Client, frames: list[Frame]
) -> None:
    """Whatever frames a peer sends, the handler keeps serving: the sender's own connection (unless
    ZeroMQ cut it for a frame over the limit), a fresh Client, and the Client that was connected all along."""
    sent = build(frames)
    if any(len(frame) > MAX for frame in sent):
        send_from_another_process(probe.endpoint, sent)
    else:
        with RawPeer(context, probe.endpoint) as peer:
            peer.send(sent)
            peer.ping()
    loop.run(alive_fresh(context, probe.endpoint))
    loop.run(alive(client, probe.endpoint))


VALID_HEADER = protocol.pack({"method": "echo", "timeout_ms": 5000})
VALID_BODY = protocol.pack({"value": 1})


def call_frames(
    version: bytes = b"SZ1", kind: bytes = b"CALL", header: Frame = VALID_HEADER, body: Frame = VALID_BODY
) -> tuple[bytes, bytes, Frame, Frame]:
    return version, kind, header, body


def looks_like_a_call_header(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("method"), str) and bool(value.get("method"))


def not_a_timeout(value: Any) -> bool:
    return type(value) is not int or value <= 0


not_call_headers = (
    msgpack_values.filter(lambda value: not looks_like_a_call_header(value))
    | st.fixed_dictionaries({"method": st.just("echo"), "timeout_ms": msgpack_leaves.filter(not_a_timeout)})
    | st.fixed_dictionaries({"method": msgpack_values.filter(lambda m: not isinstance(m, str) or not m)})
)
DEFECTS: dict[str, st.SearchStrategy[tuple[bytes, bytes, Frame, Frame]]] = {
    "unknown kind": st.builds(call_frames, kind=kinds.filter(lambda kind: kind != b"CALL")),
    "unknown version": st.builds(call_frames, version=versions.filter(lambda version: version != b"SZ1")),
    "bad msgpack header": st.builds(call_frames, header=invalid_msgpack),
    "bad msgpack params": st.builds(call_frames, body=invalid_msgpack),
    "header not a call header": st.builds(call_frames, header=not_call_headers.map(protocol.pack)),
    "params not a map": st.builds(
        call_frames, body=msgpack_values.filter(lambda v: v is not None and not isinstance(v, dict)).map(protocol.pack)
    ),
    "header nested too deeply": st.builds(call_frames, header=deep),
    "params nested too deeply": st.builds(call_frames, body=deep),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_a_bad_message_with_a_call_id_is_answered_with_an_error(
    loop: Loop,
    context: zmq.Context[Any],
    probe: processes.HandlerProcess,
    client: client_.Client,
    defect: str,
    data: st.DataObject,
) -> None:
    """A caller that can be answered (the envelope carries a 16-byte call id) gets an ERROR that says
    what was wrong, instead of waiting out its deadline in silence."""
    version, kind, header, body = data.draw(DEFECTS[defect], label=defect)
    call_id = os.urandom(16)  # any 16 bytes; drawing it would only make shrinking longer
    with RawPeer(context, probe.endpoint) as peer:
        peer.send(build([version, kind, call_id, header, body]))
        replies = peer.ping(expect=call_id)
    answers = [reply for reply in replies if reply[2:3] == [call_id]]
    assert answers, f"{defect}: no reply to the call id, only silence"
    reply = answers[0]
    assert len(reply) == 5, f"{defect}: a reply of {len(reply)} frames"
    assert reply[1] == protocol.Kind.ERROR.value, f"{defect}: a {reply[1]!r} reply"
    error = msgpack.unpackb(reply[4], raw=False)
    assert isinstance(error, dict), f"{defect}: error body {error!r:.200}"
    message = str(error.get("message", ""))
    assert message.strip(), f"{defect}: an error without a message: {error!r:.200}"
    assert not message.rstrip().endswith(":"), f"{defect}: the reason is left empty: {message!r:.200}"
    if defect == "unknown version":
        assert "version" in message.lower(), f"the error does not name the version: {message!r:.200}"
        if version and version.isascii() and version.decode().isprintable():
            assert version.decode()[:16] in message, f"the error does not name {version!r}: {message!r:.200}"
    loop.run(alive(client, probe.endpoint))


# -- 2. arbitrary params and results --------------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "x\udfff", "\udc80\ud800"])
"""Strings Python (and JSON, escaped) can hold but UTF-8 cannot encode."""
json_texts = st.text(st.characters(codec="utf-8"), max_size=12)
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_texts
)
json_values = st.recursive(
    json_leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(json_texts, children, max_size=4)
)
odd_leaves = (
    st.integers(min_value=2**64)
    | st.integers(max_value=-(2**63) - 1)
    | st.sampled_from([math.nan, math.inf, -math.inf])
    | SURROGATES
    | st.binary(max_size=8)
    | st.datetimes()
    | st.dates()
    | st.sets(st.integers(-3, 3), max_size=3)
    | st.frozensets(json_texts, max_size=2)
)
odd_keys = (
    st.integers()
    | st.booleans()
    | st.none()
    | st.floats()
    | st.binary(max_size=4)
    | st.tuples(st.integers(-3, 3))
    | SURROGATES
    | st.datetimes()
)
jsonish = st.recursive(
    json_leaves | odd_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(json_texts | odd_keys, children, max_size=4)
    ),
)
values = json_values | jsonish
params_dicts = st.dictionaries(json_texts, json_values, max_size=4) | st.dictionaries(
    json_texts | odd_keys, values, max_size=4
)
MSGPACK_INTS = range(-(2**63), 2**64)


def carried(value: Any) -> bool:
    """A JSON value that msgpack carries too: it must come back as it went."""
    if value is None or type(value) in (bool, str):
        return not isinstance(value, str) or not any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if type(value) is int:
        return value in MSGPACK_INTS
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is list:
        return all(carried(item) for item in value)
    if type(value) is dict:
        return all(type(key) is str and carried(key) and carried(item) for key, item in value.items())
    return False


def as_sent(value: Any) -> Any:
    """What a value looks like after the wire, if it is carried at all: tuples become lists."""
    if isinstance(value, list | tuple):
        return [as_sent(item) for item in value]
    if isinstance(value, dict):
        return {key: as_sent(item) for key, item in value.items()}
    return value


def same(first: Any, second: Any) -> bool:
    """Equal, and of the same types all the way down (``True == 1`` and ``1 == 1.0`` do not count).

    A loop rather than recursion: the values may be nested thousands deep."""
    stack = [(first, second)]
    while stack:
        a, b = stack.pop()
        if type(a) is not type(b):
            return False
        if type(a) is list:
            if len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif type(a) is dict:
            if a.keys() != b.keys():
                return False
            stack.extend((a[key], b[key]) for key in a)
        elif a != b:
            return False
    return True


def judge(sent: Any, got: Any, what: str) -> None:
    """The value came back as sent, or the call failed with a non-retryable CallError that says why."""
    if isinstance(got, Exception):
        assert isinstance(got, errors.CallError), f"{what} raised {type(got).__name__}: {got}, not a CallError"
        assert not carried(sent), f"{what}: a JSON value failed: {got}"
        assert got.message.strip(), f"{what}: {type(got).__name__} without a message"
        assert not got.retryable, f"{what}: {got} is retryable, but it would fail the same way again"
    else:
        assert same(got, as_sent(sent)), f"{what}: sent {sent!r:.300}, got back {got!r:.300}"


@settings(max_examples=300, deadline=None, database=None)
@given(params=params_dicts)
def test_params_round_trip_or_fail_with_a_call_error(
    loop: Loop, shapes: InProcess, client: client_.Client, params: dict[Any, Any]
) -> None:
    """Params come back as sent, or the call fails with a non-retryable CallError: never another exception
    out of Client.call, never a hang, and the Client keeps working."""
    got = loop.run(outcome(client.call(shapes.endpoint, "echo_params", params, timeout=0.5)))
    judge(params, got, "params")
    loop.run(alive(client, shapes.endpoint))


@settings(max_examples=300, deadline=None, database=None)
@given(result=values)
def test_results_round_trip_or_fail_without_retry(
    loop: Loop, shapes: InProcess, client: client_.Client, result: Any
) -> None:
    """A result JSON cannot carry fails with a non-retryable error: the method ran, and running it again
    (a retry) would repeat its side effects only to fail the same way."""
    shapes.handler.result = result
    got = loop.run(outcome(client.call(shapes.endpoint, "give", timeout=0.5)))
    judge(result, got, "result")
    loop.run(alive(client, shapes.endpoint))


def nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@settings(max_examples=30, deadline=None, database=None)
@given(depth=st.integers(1000, 1050) | st.integers(1, 5000), where=st.sampled_from(["params", "result"]))
@example(depth=1025, where="result")
@example(depth=1025, where="params")
@example(depth=1024, where="result")
@example(depth=1024, where="params")
def test_deep_values_round_trip_or_fail_with_a_call_error(
    loop: Loop, shapes: InProcess, client: client_.Client, depth: int, where: str
) -> None:
    """Nesting is bounded on the wire (msgpack's 1024 levels): a value nested deeper fails with a
    non-retryable CallError at either end, not with an exception from the encoder."""
    value = nest(depth)
    if where == "params":
        got = loop.run(outcome(client.call(shapes.endpoint, "echo", {"value": value}, timeout=0.5)))
    else:
        shapes.handler.result = value
        got = loop.run(outcome(client.call(shapes.endpoint, "give", timeout=0.5)))
    if isinstance(got, Exception):
        assert isinstance(got, errors.CallError), f"{type(got).__name__}: {got}, not a CallError"
        assert depth > 500, f"a value nested {depth} deep failed: {got}"
        assert got.message.strip(), f"{type(got).__name__} without a message"
        assert not got.retryable, f"{got} is retryable, but it would fail the same way again"
    else:
        assert same(got, value), f"a value nested {depth} deep came back changed"
    loop.run(alive(client, shapes.endpoint))


# -- 3. memory ------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_probe(tmp_path: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path) as handler:
        yield handler


def test_large_replies_do_not_grow_the_handler_without_bound(
    loop: Loop, fresh_probe: processes.HandlerProcess, client: client_.Client
) -> None:
    """800 distinct 900 KiB results (700 MiB in all) leave the handler under 400 MiB: its reply cache,
    kept for duplicates, must be bounded in bytes and not only in entries."""
    calls, workers, filler = 800, 8, "x" * (900 * 1024 - 8)

    async def worker(first: int) -> None:
        for index in range(first, calls, workers):
            value = f"{index:08d}{filler}"
            if await client.call(fresh_probe.endpoint, "echo", {"value": value}, timeout=30) != value:
                raise AssertionError(f"call {index} came back changed")

    async def run_all() -> int:
        await asyncio.gather(*(worker(first) for first in range(workers)))
        metrics = await client.call(fresh_probe.endpoint, "sys.metrics", timeout=10)
        return int(metrics["resident_memory_bytes"])

    reported = loop.run(run_all(), timeout=120)
    measured = psutil.Process(fresh_probe.popen.pid).memory_info().rss
    limit = 400 * MIB
    assert max(reported, measured) < limit, (
        f"handler RSS after {calls} calls: {measured / MIB:.0f} MiB (sys.metrics: {reported / MIB:.0f} MiB)"
    )


# -- 4. metric labels -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Described:
    """A handler process and its exposed methods: the labels ``sys.metrics`` may legitimately report."""

    process: processes.HandlerProcess
    methods: frozenset[str]


@pytest.fixture(scope="module")
def labelled(loop: Loop, client: client_.Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Described]:
    """A handler of its own, so that every label it reports comes from this test."""
    with processes.running_handler(PROBE, tmp_path_factory.mktemp("labels")) as handler:
        described = loop.run(client.call(handler.endpoint, "sys.describe", timeout=10))
        yield Described(handler, frozenset(method["name"] for method in described["methods"]))


@dataclasses.dataclass(frozen=True)
class Name:
    """A method name: ``piece`` repeated ``repeat`` times, up to just under the 1 MiB message limit (with room for
    the rest of the call); kept short in reports."""

    piece: str
    repeat: int

    def build(self) -> str:
        return self.piece * self.repeat


@st.composite
def method_names(draw: st.DrawFn) -> Name:
    piece = draw(st.text(min_size=1, max_size=12))
    most = (MAX - 1024) // len(piece.encode())
    return Name(piece, draw(st.integers(1, 4) | st.integers(1, most) | st.just(most)))


@settings(max_examples=40, deadline=None, database=None, phases=UNSHRUNK)
@given(spec=method_names())
@example(spec=Name("x", (MAX - 1024)))
@example(spec=Name("no_such_method", 1))
def test_unknown_method_names_are_not_metric_labels(
    loop: Loop, labelled: Described, client: client_.Client, spec: Name
) -> None:
    """Method names come from callers: counting each unknown one under its own label would let any caller
    grow ``sys.metrics`` (and the conductor's series) without bound. They share one label."""
    name = spec.build()
    if name in labelled.methods or name in protocol.SYS_VERBS:
        return
    endpoint = labelled.process.endpoint
    got = loop.run(outcome(client.call(endpoint, name, timeout=10)))
    assert isinstance(got, errors.CallError), f"calling {name!r:.80}: {describe(got)}"
    calls = loop.run(client.call(endpoint, "sys.metrics", timeout=10))["calls"]
    assert name not in calls, f"{name!r:.80} ({len(name)} characters) is a label of sys.metrics calls"
    others = set(calls) - labelled.methods - protocol.SYS_VERBS
    assert len(others) <= 1, f"unknown methods under {len(others)} labels: {sorted(others)!r:.300}"


# -- 5. sizes, last: a caller whose connection is cut mid-message may abort (see send_from_another_process) ---------


def oversize_error(got: Any, what: str) -> None:
    assert isinstance(got, errors.CallError), f"{what}: {type(got).__name__}: {got!r:.200}, not a CallError"
    assert not got.retryable, f"{what}: {got} is retryable, but it is too large every time"
    assert SIZE_WORDS.search(got.message), f"{what}: the error names neither size nor limit: {got}"


async def beside(client: client_.Client, endpoint: str, call: Awaitable[Any]) -> tuple[Any, list[Any]]:
    """Runs ``call`` while three other calls are in flight on the same Client to the same handler."""
    others = [
        asyncio.ensure_future(outcome(client.call(endpoint, "slow", {"seconds": 0.3, "key": f"k{i}"}, timeout=10)))
        for i in range(3)
    ]
    await asyncio.sleep(0.05)  # sent, and running on the handler
    got = await outcome(call)
    return got, list(await asyncio.gather(*others))


@settings(max_examples=10, deadline=None, database=None, phases=UNSHRUNK)
@given(excess=st.integers(-2048, 2048))
@example(excess=0)
@example(excess=1)
def test_params_around_the_message_limit(
    loop: Loop, probe: processes.HandlerProcess, client: client_.Client, excess: int
) -> None:
    """A call of ``excess`` bytes more than the 1 MiB message limit: within it, it runs; beyond it, it fails
    with a clear non-retryable error; and either way the calls in flight beside it, and later calls, are
    unaffected (the connection they share is not dropped)."""

    def size(length: int) -> int:
        call = protocol.Call(call_id=bytes(16), method="echo", params={"value": "x" * length}, timeout_ms=10_000)
        return sum(len(frame) for frame in protocol.encode_call(call))

    length = MAX + excess - (size(MAX) - MAX)
    assert size(length) == MAX + excess
    value = "x" * length
    big = client.call(probe.endpoint, "echo", {"value": value}, timeout=10)
    got, others = loop.run(beside(client, probe.endpoint, big))
    assert others == ["k0", "k1", "k2"], (
        f"calls beside a {MAX + excess}-byte call: {[describe(o) for o in others]}; that call: {describe(got)}"
    )
    if excess <= 0:
        assert got == value, f"a message within the limit failed: {describe(got)}"
    else:
        oversize_error(got, f"a {MAX + excess}-byte call")
    loop.run(alive(client, probe.endpoint))


@settings(max_examples=4, deadline=None, database=None, phases=UNSHRUNK)
@given(size=st.integers(CLIENT_LIMIT + 1, 18_000_000))
@example(size=CLIENT_LIMIT + 1)
def test_a_result_beyond_the_client_limit(loop: Loop, shapes: InProcess, client: client_.Client, size: int) -> None:
    """A result larger than the Client accepts (16 MiB) fails that call alone with a clear non-retryable
    error; the calls in flight beside it and later calls go on over the same connection."""
    big = client.call(shapes.endpoint, "blob", {"size": size}, timeout=10)
    got, others = loop.run(beside(client, shapes.endpoint, big))
    assert others == ["k0", "k1", "k2"], (
        f"calls beside a {size}-byte result: {[describe(o) for o in others]}; that call: {describe(got)}"
    )
    oversize_error(got, f"a {size}-byte result")
    loop.run(alive(client, shapes.endpoint))
