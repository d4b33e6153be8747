"""Framing, the error taxonomy and param checking: the parts of the protocol that are pure logic."""

from __future__ import annotations

import math
import random
import time
from typing import Any, Literal

import pytest

from schedulezero_handler import client, dedup, errors, protocol
from schedulezero_handler import handler as handler_
from schedulezero_handler import params as params_


def test_call_round_trips_through_frames() -> None:
    call = protocol.Call(
        call_id=protocol.new_call_id(),
        method="process",
        params={"source": "s3://bucket", "limit": 5, "tags": ["a"], "nested": {"x": None}},
        timeout_ms=1500,
        attempt=2,
        schedule="default/nightly",
        scheduled_time="2026-11-28T06:00:00Z",
    )
    frames = protocol.encode_call(call)
    assert frames[0] == b"SZ1"
    kind, call_id, header, body = protocol.split(frames)
    assert kind is protocol.Kind.CALL
    assert protocol.decode_call(call_id, header, body) == call


@pytest.mark.parametrize(
    ("frames", "problem"),
    [
        ([b"SZ1", b"CALL", b"x" * 16, b"\x80"], "expected 5 frames"),
        ([b"SZ2", b"CALL", b"x" * 16, b"\x80", b"\x80"], "unsupported protocol version"),
        ([b"SZ1", b"CALL", b"short", b"\x80", b"\x80"], "call id must be 16 bytes"),
        ([b"SZ1", b"CALL", b"x" * 16, b"\x80", b"y" * 2000], "exceeds the maximum"),
    ],
)
def test_malformed_envelopes_are_protocol_errors(frames: list[bytes], problem: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=problem):
        protocol.split(frames, max_size=1024)


def test_unknown_kind_is_bad_request() -> None:
    with pytest.raises(errors.BadRequest, match="unknown message kind"):
        protocol.split([b"SZ1", b"PING", b"x" * 16, b"\x80", b"\x80"])


@pytest.mark.parametrize(
    ("header", "body", "error", "problem"),
    [
        (b"\xff\xff", protocol.pack({}), errors.BadRequest, "header is not valid msgpack"),
        (protocol.pack([1]), protocol.pack({}), errors.BadRequest, "header must be a map"),
        (protocol.pack({"timeout_ms": 5}), protocol.pack({}), errors.BadRequest, "header.method"),
        (protocol.pack({"method": "m", "timeout_ms": 0}), protocol.pack({}), errors.BadRequest, "timeout_ms"),
        (protocol.pack({"method": "m", "timeout_ms": 5}), protocol.pack([1, 2]), errors.InvalidParams, "params must"),
        (protocol.pack({"method": "m", "timeout_ms": 5}), protocol.pack({"b": b"x"}), errors.InvalidParams, "params.b"),
    ],
)
def test_bad_call_content_is_named(header: bytes, body: bytes, error: type[errors.CallError], problem: str) -> None:
    with pytest.raises(error, match=problem):
        protocol.decode_call(b"x" * 16, header, body)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({1: "a"}, "key of type int"),
        ({"a": [1, {"b": {1, 2}}]}, r"value.a\[1\].b is a set"),
        (math.nan, "nan"),
        (b"raw", "bytes"),
    ],
)
def test_only_json_values_cross_the_wire(value: Any, problem: str) -> None:
    with pytest.raises(TypeError, match=problem):
        protocol.check_json(value)


def _nested(depth: int, innermost: Any) -> list[Any]:
    outer: list[Any] = []
    current = outer
    for _ in range(depth):
        inner: list[Any] = []
        current.append(inner)
        current = inner
    current.append(innermost)
    return outer


def test_deep_values_are_checked_without_running_out_of_stack() -> None:
    """msgpack carries 511 levels: a bad value that deep is named, never lost to a RecursionError."""
    protocol.check_json(_nested(5000, 1))  # plain JSON at any depth
    call = protocol.Call(call_id=b"x" * 16, method="m", params={"tree": _nested(500, b"raw")}, timeout_ms=1000)
    _, _, header, body = protocol.split(protocol.encode_call(call), max_size=protocol.MAX_MESSAGE_SIZE)
    with pytest.raises(errors.InvalidParams, match=r"params\.tree(\[0\]){500}\[0\] is a bytes"):
        protocol.decode_call(b"x" * 16, header, body)
    with pytest.raises(TypeError, match="result is nested too deeply"):
        protocol.check_json(_nested(5000, b"raw"), "result")


def test_error_types_keep_their_name_and_retryability() -> None:
    for name, cls in errors.ERROR_TYPES.items():
        back = errors.from_wire(cls("why").to_wire())
        assert type(back) is cls
        assert back.type == name
        assert back.message == "why"
    assert {n for n, c in errors.ERROR_TYPES.items() if not c.retryable} == {
        "BadRequest",
        "MethodNotFound",
        "InvalidParams",
        "Unauthorized",
    }
    newer = errors.from_wire({"type": "QuotaExceeded", "message": "m", "retryable": False})
    assert (newer.type, newer.retryable, newer.message) == ("QuotaExceeded", False, "m")


def test_backoff_is_full_jitter_capped() -> None:
    policy = client.RetryPolicy(max_attempts=10, backoff=1.0, max_backoff=5.0)
    rng = random.Random(1)
    for attempt, bound in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= 0.0
        assert max(delays) <= bound
        assert max(delays) > bound * 0.8  # spread over the whole range, not a fixed wait


class Sample(handler_.Handler):
    @handler_.expose
    async def run(self, name: str, count: int = 1, ratio: float = 0.5, tags: list[str] | None = None) -> None: ...

    @handler_.expose
    def pick(self, mode: Literal["fast", "slow"], options: dict[str, int] | None = None, **extra: bool) -> None: ...

    def hidden(self) -> None: ...


def test_only_exposed_methods_are_listed() -> None:
    methods = handler_.exposed_methods(Sample())
    assert sorted(methods) == ["pick", "run"]
    assert methods["run"].is_async
    assert not methods["pick"].is_async
    assert methods["run"].describe()["params"] == [
        {"name": "name", "type": "str", "required": True},
        {"name": "count", "type": "int", "required": False},
        {"name": "ratio", "type": "float", "required": False},
        {"name": "tags", "type": "list[str] | None", "required": False},
    ]


@pytest.mark.parametrize(
    ("method", "params", "problem"),
    [
        ("run", {}, "missing required parameter 'name'"),
        ("run", {"name": 3}, "parameter 'name': expected a string"),
        ("run", {"name": "a", "count": True}, "parameter 'count': expected an integer"),
        ("run", {"name": "a", "count": 1.5}, "parameter 'count': expected an integer"),
        ("run", {"name": "a", "tags": ["x", 2]}, "parameter 'tags': expected list"),
        ("run", {"name": "a", "colour": "red"}, "unexpected parameter 'colour'"),
        ("pick", {"mode": "medium"}, "parameter 'mode': expected one of"),
        ("pick", {"mode": "fast", "options": {"a": "b"}}, "parameter 'options': expected dict"),
        ("pick", {"mode": "fast", "verbose": "yes"}, "parameter 'verbose': expected a boolean"),
    ],
)
def test_params_mismatch_names_the_field(method: str, params: dict[str, Any], problem: str) -> None:
    signature = handler_.exposed_methods(Sample())[method].params
    with pytest.raises(errors.InvalidParams) as raised:
        params_.check(params, signature)
    assert problem in raised.value.message


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("run", {"name": "a"}),
        ("run", {"name": "a", "count": 2, "ratio": 1, "tags": None}),
        ("run", {"name": "a", "tags": ["x", "y"]}),
        ("pick", {"mode": "slow", "options": {"a": 1}, "verbose": True}),
    ],
)
def test_matching_params_pass(method: str, params: dict[str, Any]) -> None:
    params_.check(params, handler_.exposed_methods(Sample())[method].params)


def test_reply_cache_is_bounded_in_count_and_age() -> None:
    cache = dedup.ReplyCache(ttl=60, max_entries=3)
    for i in range(5):
        cache.put(bytes([i]) * 16, dedup.Reply(protocol.encode_result(bytes([i]) * 16, i), attempt=1))
    assert len(cache) == 3
    assert cache.get(b"\x00" * 16) is None
    stored = cache.get(b"\x04" * 16)
    assert stored is not None
    assert stored.succeeded

    short = dedup.ReplyCache(ttl=0.05, max_entries=100)
    short.put(b"a" * 16, dedup.Reply(protocol.encode_error(b"a" * 16, errors.Busy("x")), attempt=2))
    assert short.get(b"a" * 16) == dedup.Reply(protocol.encode_error(b"a" * 16, errors.Busy("x")), attempt=2)
    time.sleep(0.1)
    assert short.get(b"a" * 16) is None
    short.put(b"b" * 16, dedup.Reply([b"SZ1", b"RESULT"], attempt=1))
    assert len(short) == 1
