"""The wire protocol between callers (DEALER) and handlers (ROUTER).

A message is five frames::

    [b"SZ1", kind, call_id, header, body]

``kind`` is CALL, RESULT or ERROR; ``call_id`` is 16 bytes chosen by the
caller and echoed in the reply (a Schedule's run id, so a handler can drop
duplicates); ``header`` and ``body`` are msgpack. A CALL's header carries the
method and a *relative* deadline (``timeout_ms``) so that clock skew between
hosts does not matter; its body is the params. A RESULT's body is the value, an
ERROR's body is ``{type, message, retryable}``.

Only JSON-representable values cross the wire, because results end up in
Kubernetes status: maps with string keys, lists, strings, finite numbers,
booleans and null.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Sequence
from typing import Any

import msgpack

from schedulezero_handler import errors

VERSION = b"SZ1"
CALL_ID_SIZE = 16
MAX_MESSAGE_SIZE = 1024 * 1024
"""Default bound on a call a handler accepts (and a client sends): larger ones fail ``MessageTooLarge``."""
MAX_REPLY_SIZE = 16 * MAX_MESSAGE_SIZE
"""Default bound on a reply a handler sends (and a client accepts): larger ones fail ``MessageTooLarge``."""
TRANSPORT_FACTOR = 4
"""Each side lets ZeroMQ take messages up to this many times its own bound and answers the
excess itself, so one oversized call or reply fails alone; only a peer sending more than that,
which no conforming peer does, loses its connection (ZeroMQ's MAXMSGSIZE drops it unread)."""
INT_RANGE = (-(2**63), 2**64 - 1)
"""Integers msgpack can carry: JSON has no bound, the wire has."""

RESERVED_PREFIX = "sys."
SYS_VERBS = frozenset({"sys.health", "sys.describe", "sys.metrics", "sys.sleep", "sys.wake", "sys.cancel"})


class Kind(bytes, enum.Enum):
    CALL = b"CALL"
    RESULT = b"RESULT"
    ERROR = b"ERROR"


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the message says which part."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """A request to run ``method`` with ``params`` within ``timeout_ms``."""

    call_id: bytes
    method: str
    params: dict[str, Any]
    timeout_ms: int
    attempt: int = 1
    schedule: str | None = None
    """``namespace/name`` of the Schedule the call runs for, if any."""
    scheduled_time: str | None = None
    """Nominal time of the run, RFC 3339 UTC, if any."""
    sender: str | None = None
    """Who sent the call (an operator replica's identity), for the handler's log and journal: when one
    run reaches a handler twice, the two deliveries say which replicas sent them."""
    resent: bool = False
    """The call re-sends a run that a previous operator (or replica) left in flight: the one expected
    second delivery, which the handler answers from its reply cache if it still keeps the reply."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A RESULT (``value``) or an ERROR (``error``) for ``call_id``."""

    call_id: bytes
    value: Any = None
    error: errors.CallError | None = None


def new_call_id() -> bytes:
    return os.urandom(16)


def check_json(value: Any, path: str = "value") -> None:
    """Raises TypeError naming the first part of ``value`` that JSON cannot carry."""
    if _plainly_json(value):  # every call's params and result: the walk naming parts is for failures
        return
    try:
        _check_json(value, path)
    except RecursionError:
        raise TypeError(f"{path} is nested too deeply") from None


def _plainly_json(value: Any) -> bool:
    """True when ``value`` is made of exactly JSON's types (subclasses go the long way).

    A loop over a stack rather than recursion, so that depth costs no frames.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not INT_RANGE[0] <= item <= INT_RANGE[1]:
                return False
            continue
        if kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict:
            if not all(type(key) is str for key in item):
                return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        else:
            return False
    return True


def _check_json(value: Any, path: str) -> None:
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise TypeError(f"{path} is an integer beyond 64 bits, which the wire cannot carry")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path} is {value}, which JSON cannot represent")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a key of type {type(key).__name__}; JSON keys are strings")
            _check_json(item, f"{path}.{key}")
        return
    raise TypeError(f"{path} is a {type(value).__name__}, which JSON cannot represent")


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.StackError, RecursionError):
        raise ProtocolError(f"{what} is nested too deeply") from None
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"{what} is not valid msgpack: {str(error) or type(error).__name__}") from None


def encode_call(call: Call) -> list[bytes]:
    header: dict[str, Any] = {"method": call.method, "timeout_ms": call.timeout_ms, "attempt": call.attempt}
    if call.schedule is not None:
        header["schedule"] = call.schedule
    if call.scheduled_time is not None:
        header["scheduled_time"] = call.scheduled_time
    if call.sender is not None:
        header["sender"] = call.sender
    if call.resent:
        header["resent"] = True
    return [VERSION, Kind.CALL.value, call.call_id, pack(header), pack(call.params)]


def encode_result(call_id: bytes, value: Any) -> list[bytes]:
    return [VERSION, Kind.RESULT.value, call_id, pack({}), pack(value)]


def encode_error(call_id: bytes, error: errors.CallError) -> list[bytes]:
    return [VERSION, Kind.ERROR.value, call_id, pack({}), pack(error.to_wire())]


def split(frames: Sequence[bytes], *, max_size: int = MAX_MESSAGE_SIZE) -> tuple[Kind, bytes, bytes, bytes]:
    """Checks the envelope and returns (kind, call_id, header, body), still packed.

    A message that cannot be answered (wrong frame count, no call id) raises
    ProtocolError, to be dropped; once the call id is known, the problem is a
    CallError the receiver can answer under that id.
    """
    if len(frames) != 5:
        raise ProtocolError(f"expected 5 frames, got {len(frames)}")
    version, kind, call_id, header, body = frames
    if len(call_id) != CALL_ID_SIZE:
        raise ProtocolError(f"call id must be {CALL_ID_SIZE} bytes, got {len(call_id)}")
    if version != VERSION:
        raise errors.BadRequest(f"unsupported protocol version {bytes(version)[:16]!r}; this side speaks {VERSION!r}")
    size = sum(len(frame) for frame in frames)
    if size > max_size:
        raise errors.MessageTooLarge(f"message of {size} bytes exceeds the maximum of {max_size}")
    try:
        return Kind(bytes(kind)), bytes(call_id), header, body
    except ValueError:
        raise errors.BadRequest(f"unknown message kind {bytes(kind)[:16]!r}") from None


def decode_call(call_id: bytes, header: bytes, body: bytes) -> Call:
    """A CALL from its packed header and body; malformed content is BadRequest."""
    try:
        fields = unpack(header, "header")
        params = unpack(body, "params")
    except ProtocolError as error:
        raise errors.BadRequest(str(error)) from None
    if not isinstance(fields, dict):
        raise errors.BadRequest("header must be a map")
    method = fields.get("method")
    if not isinstance(method, str) or not method:
        raise errors.BadRequest("header.method must be a non-empty string")
    timeout_ms = fields.get("timeout_ms")
    if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms <= 0:
        raise errors.BadRequest("header.timeout_ms must be a positive integer")
    attempt = fields.get("attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise errors.BadRequest("header.attempt must be a positive integer")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise errors.InvalidParams(f"params must be a map of names to values, got {type(params).__name__}")
    try:
        check_json(params, "params")
    except TypeError as error:
        raise errors.InvalidParams(str(error)) from None
    schedule, scheduled_time = fields.get("schedule"), fields.get("scheduled_time")
    sender = fields.get("sender")
    return Call(
        call_id=call_id,
        method=method,
        params=params,
        timeout_ms=timeout_ms,
        attempt=attempt,
        schedule=schedule if isinstance(schedule, str) else None,
        scheduled_time=scheduled_time if isinstance(scheduled_time, str) else None,
        sender=sender[:253] if isinstance(sender, str) else None,
        resent=fields.get("resent") is True,
    )


def decode_reply(kind: Kind, call_id: bytes, body: bytes) -> Reply:
    """A RESULT or ERROR from its packed body."""
    value = unpack(body, "body")
    if kind is Kind.RESULT:
        return Reply(call_id, value=value)
    if kind is Kind.ERROR:
        return Reply(call_id, error=errors.from_wire(value))
    raise ProtocolError(f"a caller does not accept {kind.name} messages")
