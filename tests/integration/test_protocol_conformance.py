"""docs/protocol.md, held to the real handler and the real client.

The document's byte-level examples (fenced blocks ```frames example=NAME message=call|reply``` with the
frames in hex, and ```json example=NAME message=call|reply``` with the same message decoded) are parsed
out of it and:

- decoded with the real ``protocol`` module, which must yield the documented values, and re-encoded,
  which must yield the documented bytes;
- sent as they are over a raw pyzmq DEALER to a real ProbeHandler process, whose reply must equal the
  documented reply byte for byte (every example is deterministic: fixed call ids, a fresh handler);
- produced by the real ``Client`` against a bare ROUTER socket, which must see the documented call bytes
  and, answering with the documented reply bytes, make the client return or raise what the document says.

The rest checks the document's tables against the code (error types and their retryable flags, system
verbs, header fields, default bounds) and its prose about call ids, refusals, deadlines and draining
against a real handler, over raw frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import pathlib
import re
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import zmq
import zmq.asyncio

from schedulezero_handler import client as client_
from schedulezero_handler import errors, protocol
from schedulezero_handler import server as server_
from tests.support import processes

PROBE = "tests.support.handlers:ProbeHandler"
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
MiB = 1024 * 1024
REPLY_TIMEOUT = 10.0

BLOCK = re.compile(r"^```(frames|json) example=(\S+) message=(call|reply)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
HEX_BYTE = re.compile(r"[0-9a-f]{2}")


# -- the document ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Message:
    frames: list[bytes]
    decoded: dict[str, Any]
    """The ``json`` block: version, kind, call_id (hex), header and body."""

    @property
    def call_id(self) -> bytes:
        return bytes.fromhex(self.decoded["call_id"])


@dataclasses.dataclass(frozen=True)
class Example:
    name: str
    call: Message
    reply: Message


def parse_frames(text: str, where: str) -> list[bytes]:
    """Frames from a ``frames`` block: ``frame N`` starts frame N, other lines continue it, ``#`` starts a comment."""
    frames: list[bytearray] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "frame":
            if len(words) < 2 or words[1] != str(len(frames)):
                raise ValueError(f"{where}, line {number}: expected 'frame {len(frames)}', got {line.strip()!r}")
            frames.append(bytearray())
            words = words[2:]
        elif not frames:
            raise ValueError(f"{where}, line {number}: bytes before 'frame 0'")
        for word in words:
            if not HEX_BYTE.fullmatch(word):
                raise ValueError(f"{where}, line {number}: {word!r} is not a byte in hex")
            frames[-1].append(int(word, 16))
    return [bytes(frame) for frame in frames]


def load_examples() -> dict[str, Example]:
    """Every example of the document, by name; ValueError when one is incomplete or malformed."""
    blocks: dict[tuple[str, str, str], str] = {}
    for kind, name, message, text in BLOCK.findall(DOC.read_text()):
        if (kind, name, message) in blocks:
            raise ValueError(f"{DOC.name}: two {kind} blocks for example={name} message={message}")
        blocks[kind, name, message] = text
    examples = {}
    for name in dict.fromkeys(name for _, name, _ in blocks):
        messages = {}
        for message in ("call", "reply"):
            where = f"{DOC.name}, example={name} message={message}"
            missing = [kind for kind in ("frames", "json") if (kind, name, message) not in blocks]
            if missing:
                raise ValueError(f"{where}: no {' or '.join(missing)} block")
            decoded = json.loads(blocks["json", name, message])
            if set(decoded) != {"version", "kind", "call_id", "header", "body"}:
                raise ValueError(f"{where}: the json block needs version, kind, call_id, header and body")
            messages[message] = Message(parse_frames(blocks["frames", name, message], where), decoded)
        examples[name] = Example(name, messages["call"], messages["reply"])
    return examples


EXAMPLES = load_examples()


def section(heading: str) -> str:
    """The text of a ``## heading`` section of the document."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", DOC.read_text(), re.M | re.S)
    assert match is not None, f"{DOC.name} has no section '## {heading}'"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every markdown table in ``text``, as cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| :]+\|", line.strip()):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def canonical(value: Any) -> str:
    """JSON with sorted keys: equal only for equal JSON values (``True == 1`` in Python, not here)."""
    return json.dumps(value, sort_keys=True)


def decoded(frames: list[bytes]) -> dict[str, Any]:
    """A message as the document's ``json`` blocks show it, decoded with the real protocol module."""
    kind, call_id, header, body = protocol.split(frames, max_size=protocol.MAX_REPLY_SIZE)
    return {
        "version": frames[0].decode(),
        "kind": kind.value.decode(),
        "call_id": call_id.hex(),
        "header": protocol.unpack(header, "header"),
        "body": protocol.unpack(body, "body"),
    }


def documented_call(message: Message) -> protocol.Call:
    header = message.decoded["header"]
    return protocol.Call(
        call_id=message.call_id,
        method=header["method"],
        params=message.decoded["body"],
        timeout_ms=header["timeout_ms"],
        attempt=header.get("attempt", 1),
        schedule=header.get("schedule"),
        scheduled_time=header.get("scheduled_time"),
    )


def examples() -> list[Example]:
    return list(EXAMPLES.values())


def ids(example: Example) -> str:
    return example.name


# -- raw frames -----------------------------------------------------------------------------------------------------


class Wire:
    """A bare DEALER: what any other implementation of a caller would be.

    Replies come in any order: ``receive`` takes the one for a call id, keeping the others for later."""

    def __init__(self, socket: zmq.asyncio.Socket) -> None:
        self.socket = socket
        self.held: list[list[bytes]] = []

    async def send(self, frames: list[bytes]) -> None:
        await self.socket.send_multipart(frames)

    async def receive(self, call_id: bytes, timeout: float = REPLY_TIMEOUT) -> list[bytes]:
        for frames in self.held:
            if frames[2:3] == [call_id]:
                self.held.remove(frames)
                return frames
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames = await asyncio.wait_for(self.socket.recv_multipart(), deadline - time.monotonic())
            except TimeoutError:
                raise AssertionError(f"no reply for call id {call_id.hex()} within {timeout} s") from None
            if frames[2:3] == [call_id]:
                return frames
            self.held.append(frames)

    async def exchange(self, frames: list[bytes]) -> list[bytes]:
        await self.send(frames)
        return await self.receive(frames[2])

    async def silent_for(self, seconds: float) -> bool:
        return not self.held and not await self.socket.poll(int(seconds * 1000))


@contextlib.asynccontextmanager
async def wire(endpoint: str) -> AsyncIterator[Wire]:
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(endpoint)
    try:
        yield Wire(socket)
    finally:
        socket.close(linger=0)
        context.term()


def call_frames(call_id: bytes, method: str, params: dict[str, Any] | None = None, **header: Any) -> list[bytes]:
    fields = {"method": method, "timeout_ms": 5000, "attempt": 1, **header}
    return [b"SZ1", b"CALL", call_id, protocol.pack(fields), protocol.pack(params or {})]


def outcome(frames: list[bytes], call_id: bytes) -> tuple[str, Any]:
    """(kind, body) of a reply, after checking its envelope as the document describes it."""
    assert len(frames) == 5, frames
    assert frames[0] == b"SZ1"
    assert frames[2] == call_id
    assert frames[3] == b"\x80"  # replies carry an empty header map
    return frames[1].decode(), protocol.unpack(frames[4], "body")


def error(type_: str, message: str) -> tuple[str, dict[str, Any]]:
    return "ERROR", {"type": type_, "message": message, "retryable": errors.ERROR_TYPES[type_].retryable}


async def call(line: Wire, call_id: bytes, method: str, params: dict[str, Any] | None = None, **header: Any) -> Any:
    return outcome(await line.exchange(call_frames(call_id, method, params, **header)), call_id)


# -- the examples ---------------------------------------------------------------------------------------------------


def test_the_document_has_the_examples_it_promises() -> None:
    replies = {example.reply.decoded["kind"] for example in examples()}
    assert {"RESULT", "ERROR"} <= replies
    assert any(example.call.decoded["header"]["method"] in protocol.SYS_VERBS for example in examples())
    call_ids = [example.call.call_id for example in examples()]
    assert len(set(call_ids)) == len(call_ids), "examples must not share call ids: the handler would dedup them"


@pytest.mark.parametrize("example", examples(), ids=ids)
def test_documented_frames_decode_to_the_documented_values(example: Example) -> None:
    for message in (example.call, example.reply):
        assert len(message.frames) == 5
        assert canonical(decoded(message.frames)) == canonical(message.decoded)

    kind, call_id, header, body = protocol.split(example.call.frames)
    assert kind is protocol.Kind.CALL
    call = protocol.decode_call(call_id, header, body)
    assert call == documented_call(example.call)
    assert protocol.encode_call(call) == example.call.frames  # what the real encoder sends, byte for byte

    kind, call_id, _, body = protocol.split(example.reply.frames, max_size=protocol.MAX_REPLY_SIZE)
    assert call_id == example.call.call_id
    reply = protocol.decode_reply(kind, call_id, body)
    documented = example.reply.decoded["body"]
    if kind is protocol.Kind.RESULT:
        assert reply.error is None
        assert canonical(reply.value) == canonical(documented)
        assert protocol.encode_result(call_id, reply.value) == example.reply.frames
    else:
        assert reply.error is not None
        assert reply.error.to_wire() == documented
        assert type(reply.error) is errors.ERROR_TYPES[documented["type"]]
        assert protocol.encode_error(call_id, reply.error) == example.reply.frames


@pytest.mark.parametrize("example", examples(), ids=ids)
async def test_a_handler_answers_each_example_as_documented(example: Example, probe: processes.HandlerProcess) -> None:
    async with wire(probe.endpoint) as line:
        reply = await line.exchange(example.call.frames)
    assert reply == example.reply.frames, (
        f"the handler's reply to example {example.name!r} differs from the document:\n"
        f"  handler:  {decoded(reply)}\n  document: {example.reply.decoded}"
    )


@pytest.mark.parametrize("example", examples(), ids=ids)
async def test_the_client_sends_and_reads_each_example_as_documented(example: Example, client: client_.Client) -> None:
    context = zmq.asyncio.Context()
    router = context.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    call = documented_call(example.call)
    try:
        if call.attempt == 1:  # what `Client.call` sends; later attempts are the operator's `Client.attempt`
            sent = client.call(
                endpoint,
                call.method,
                call.params,
                timeout=call.timeout_ms / 1000,
                call_id=call.call_id,
                schedule=call.schedule,
                scheduled_time=call.scheduled_time,
            )
        else:
            sent = client.attempt(endpoint, call)
        pending = asyncio.ensure_future(sent)
        identity, *frames = await asyncio.wait_for(router.recv_multipart(), REPLY_TIMEOUT)
        assert frames == example.call.frames, (
            f"the client's call for example {example.name!r} differs from the document:\n"
            f"  client:   {decoded(frames)}\n  document: {example.call.decoded}"
        )
        await router.send_multipart([identity, *example.reply.frames])
        documented = example.reply.decoded["body"]
        if example.reply.decoded["kind"] == "RESULT":
            assert canonical(await asyncio.wait_for(pending, REPLY_TIMEOUT)) == canonical(documented)
        else:
            with pytest.raises(errors.CallError) as raised:
                await asyncio.wait_for(pending, REPLY_TIMEOUT)
            assert raised.value.to_wire() == documented
            assert type(raised.value) is errors.ERROR_TYPES[documented["type"]]
    finally:
        router.close(linger=0)
        context.term()


# -- the tables -----------------------------------------------------------------------------------------------------


def test_the_error_table_lists_every_type_with_its_flag() -> None:
    documented = {}
    for row in table_rows(section("Errors")):
        match = re.fullmatch(r"`(\w+)`", row[0])
        if match is not None and len(row) > 1 and row[1] in ("yes", "no"):
            documented[match.group(1)] = row[1] == "yes"
    assert documented == {name: cls.retryable for name, cls in errors.ERROR_TYPES.items()}


def test_the_system_verbs_table_lists_every_verb() -> None:
    verbs = {
        match.group(1)
        for row in table_rows(section("System verbs"))
        if (match := re.fullmatch(r"`(sys\.\w+)`", row[0]))
    }
    assert verbs == protocol.SYS_VERBS


def test_the_header_table_lists_every_field_a_call_carries() -> None:
    rows = table_rows(section("Header"))
    fields = {match.group(1) for row in rows if (match := re.fullmatch(r"`(\w+)`", row[0]))}
    everything = protocol.Call(
        call_id=bytes(16),
        method="m",
        params={},
        timeout_ms=1,
        attempt=2,
        schedule="a/b",
        scheduled_time="t",
        sender="replica-0",
        resent=True,
    )
    assert fields == set(protocol.unpack(protocol.encode_call(everything)[3], "header"))
    required = {row[0].strip("`") for row in rows if len(row) > 2 and row[2] == "yes"}
    assert required == {"method", "timeout_ms"}


def test_the_documented_bounds_are_the_code_defaults() -> None:
    limits = {row[0]: row[1] for row in table_rows(section("Limits"))}
    assert limits["a call, all five frames summed"] == f"{protocol.MAX_MESSAGE_SIZE // MiB} MiB"
    assert limits["a reply, all five frames summed"] == f"{protocol.MAX_REPLY_SIZE // MiB} MiB"
    assert limits["one frame, at the transport"].startswith(f"{protocol.TRANSPORT_FACTOR} \u00d7 the receiver's bound")
    settings = server_.ServerSettings()
    store = {row[0]: row[1] for row in table_rows(section("Call ids, duplicates and retries"))}
    assert store["age"].startswith(f"{settings.reply_ttl:g} s ")
    assert store["count"].startswith(f"{settings.reply_cache_size:,} replies (`--reply-cache-size`")
    assert store["bytes (frame sizes summed)"].startswith(f"{settings.reply_cache_bytes // MiB} MiB ")
    assert f"`timeout` + {client_.REPLY_GRACE:g} s" in section("Deadlines")
    assert f"`--max-concurrent-calls` (default {settings.max_concurrent_calls})" in section(
        "Busy, sleeping and draining"
    )


# -- the prose, over raw frames -------------------------------------------------------------------------------------


async def test_a_resend_of_a_finished_call_gets_the_stored_reply_without_running_again(
    probe: processes.HandlerProcess,
) -> None:
    example = EXAMPLES["echo"]
    async with wire(probe.endpoint) as line:
        assert await line.exchange(example.call.frames) == example.reply.frames
        assert await line.exchange(example.call.frames) == example.reply.frames
        assert await call(line, b"c" * 16, "counts") == ("RESULT", {"echo": 1})


async def test_a_resend_of_a_running_call_joins_it(probe: processes.HandlerProcess) -> None:
    call_id = b"j" * 16
    async with wire(probe.endpoint) as line:
        await line.send(call_frames(call_id, "slow", {"seconds": 1.5, "key": "j"}))
        await asyncio.sleep(0.1)
        await line.send(call_frames(call_id, "slow", {"seconds": 1.5, "key": "j"}, attempt=2))  # any attempt joins
        first, second = await line.receive(call_id), await line.receive(call_id)
        assert first == second
        assert outcome(first, call_id) == ("RESULT", "j")
        counts = (await call(line, b"c" * 16, "counts"))[1]
    assert counts["slow-start:j"] == 1


async def test_a_failed_call_runs_again_only_on_a_higher_attempt(probe: processes.HandlerProcess) -> None:
    call_id = b"f" * 16
    params = {"key": "f", "failures": 1}  # fails on its first execution only
    async with wire(probe.endpoint) as line:
        failed = await line.exchange(call_frames(call_id, "flaky", params, attempt=1))
        kind, body = outcome(failed, call_id)
        assert (kind, body["type"], body["retryable"]) == ("ERROR", "HandlerError", True)
        assert await line.exchange(call_frames(call_id, "flaky", params, attempt=1)) == failed  # a resend: stored
        assert await call(line, call_id, "flaky", params, attempt=2) == ("RESULT", 2)  # a new attempt: runs
        assert await call(line, call_id, "flaky", params, attempt=1) == ("RESULT", 2)  # a result wins over any attempt


async def test_busy_is_a_refusal_that_is_not_stored(tmp_path: pathlib.Path) -> None:
    with processes.running_handler(PROBE, tmp_path, "--max-concurrent-calls", "1") as handler:
        async with wire(handler.endpoint) as line:
            running = b"s" * 16
            await line.send(call_frames(running, "slow", {"seconds": 1.0, "key": "s"}))
            await asyncio.sleep(0.2)
            refused = b"e" * 16
            assert await call(line, refused, "echo", {"value": 1}) == error("Busy", "1 calls in flight, the maximum")
            kind, health = await call(line, b"h" * 16, "sys.health")  # system verbs are not limited
            assert (kind, health["status"]) == ("RESULT", "ok")
            assert outcome(await line.receive(running), running) == ("RESULT", "s")
            assert await call(line, refused, "echo", {"value": 1}) == ("RESULT", 1)  # judged afresh: runs


async def test_an_async_method_past_its_deadline_is_cancelled(probe: processes.HandlerProcess) -> None:
    call_id = b"d" * 16
    async with wire(probe.endpoint) as line:
        started = time.monotonic()
        reply = await call(line, call_id, "slow", {"seconds": 5, "key": "d"}, timeout_ms=200)
        assert time.monotonic() - started < 2
        assert reply == error("DeadlineExceeded", "slow did not finish within 200 ms")
        counts = (await call(line, b"c" * 16, "counts"))[1]
    assert counts == {"slow-start:d": 1}  # it started and never finished


async def test_sys_cancel_cancels_a_running_call(probe: processes.HandlerProcess) -> None:
    running = b"r" * 16
    async with wire(probe.endpoint) as line:
        await line.send(call_frames(running, "slow", {"seconds": 5, "key": "r"}))
        await asyncio.sleep(0.2)
        await line.send(call_frames(b"x" * 16, "sys.cancel", {"call_id": running.hex()}))
        assert outcome(await line.receive(b"x" * 16), b"x" * 16) == ("RESULT", {"cancelled": True})
        assert outcome(await line.receive(running), running) == error("Cancelled", "slow was cancelled")
        assert await call(line, b"y" * 16, "sys.cancel", {"call_id": running.hex()}) == ("RESULT", {"cancelled": False})
        assert await call(line, b"z" * 16, "sys.cancel", {"call_id": "zz"}) == error(
            "InvalidParams", "parameter 'call_id': expected the call id as 32 hex digits"
        )


async def test_messages_a_handler_cannot_read(probe: processes.HandlerProcess) -> None:
    call_id = b"m" * 16
    echo = call_frames(call_id, "echo", {"value": 1})
    async with wire(probe.endpoint) as line:
        await line.send(echo[:4])  # four frames: nothing to answer
        assert await line.silent_for(0.5)
        await line.send([*echo[:2], b"short", *echo[3:]])  # no 16-byte call id: nothing to answer
        assert await line.silent_for(0.5)
        assert outcome(await line.exchange([b"SZ2", *echo[1:]]), call_id) == error(
            "BadRequest", "unsupported protocol version b'SZ2'; this side speaks b'SZ1'"
        )
        assert outcome(await line.exchange([echo[0], b"PING", *echo[2:]]), call_id) == error(
            "BadRequest", "unknown message kind b'PING'"
        )
        assert outcome(await line.exchange([echo[0], b"RESULT", *echo[2:]]), call_id) == error(
            "BadRequest", "RESULT is not a request"
        )
        no_deadline = [*echo[:3], protocol.pack({"method": "echo"}), echo[4]]
        assert outcome(await line.exchange(no_deadline), call_id) == error(
            "BadRequest", "header.timeout_ms must be a positive integer"
        )
        large = call_frames(call_id, "echo", {"value": "x" * MiB})
        kind, body = outcome(await line.exchange(large), call_id)
        size = sum(len(frame) for frame in large)
        assert (kind, body) == error(
            "MessageTooLarge", f"message of {size} bytes exceeds the maximum of {protocol.MAX_MESSAGE_SIZE}"
        )
        kind, metrics = await call(line, b"n" * 16, "sys.metrics")
    assert metrics["dropped_messages"] == 2


async def test_a_draining_handler_refuses_new_calls_and_finishes_running_ones(tmp_path: pathlib.Path) -> None:
    with processes.running_handler(PROBE, tmp_path, "--drain-timeout", "10") as handler:
        async with wire(handler.endpoint) as line:
            running = b"r" * 16
            await line.send(call_frames(running, "slow", {"seconds": 3, "key": "r"}))
            await asyncio.sleep(0.2)
            handler.signal(signal.SIGTERM)
            health: dict[str, Any] = {"ready": True}
            for attempt in range(50):  # until the handler has begun to stop
                health = (await call(line, attempt.to_bytes(16, "big"), "sys.health"))[1]
                if not health["ready"]:
                    break
                await asyncio.sleep(0.05)
            assert health == {"status": "ok", "state": "active", "version": "9.9.9", "ready": False, "overrun": 0}
            assert await call(line, b"e" * 16, "echo", {"value": 1}) == error("Unavailable", "handler is shutting down")
            assert outcome(await line.receive(running), running) == ("RESULT", "r")
        assert handler.popen.wait(15) == 0
