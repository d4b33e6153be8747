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
        ([b"SZ1", b"CALL", b"short", b"\x80", b"\x80"], "call id must be 16 bytes"),
    ],
)
def test_unanswerable_envelopes_are_protocol_errors(frames: list[bytes], problem: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=problem):
        protocol.split(frames, max_size=1024)


@pytest.mark.parametrize(
    ("frames", "error", "problem"),
    [
        ([b"SZ1", b"PING", b"x" * 16, b"\x80", b"\x80"], errors.BadRequest, "unknown message kind b'PING'"),
        ([b"SZ2", b"CALL", b"x" * 16, b"\x80", b"\x80"], errors.BadRequest, "unsupported protocol version b'SZ2'"),
        (
            [b"SZ1", b"CALL", b"x" * 16, b"\x80", b"y" * 2000],
            errors.MessageTooLarge,
            "2024 bytes exceeds the maximum of 1024",
        ),
    ],
)
def test_envelopes_with_a_call_id_get_an_answerable_error(
    frames: list[bytes], error: type[errors.CallError], problem: str
) -> None:
    """Once the call id is known the caller can be told what is wrong, instead of waiting out its timeout."""
    with pytest.raises(error, match=problem) as raised:
        protocol.split(frames, max_size=1024)
    assert not raised.value.retryable


def test_msgpack_nested_past_the_depth_limit_says_so() -> None:
    deep = b"\x91" * 2000 + b"\xc0"  # 2000 nested one-element arrays
    with pytest.raises(protocol.ProtocolError, match="params is nested too deeply"):
        protocol.unpack(deep, "params")


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, {"a": [2**70]}])
def test_integers_beyond_64_bits_are_not_json_the_wire_carries(value: object) -> None:
    with pytest.raises(TypeError, match="beyond 64 bits"):
        protocol.check_json(value, "params")


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
        "MessageTooLarge",
        "InvalidResult",
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
    cache = dedup.ReplyCache(ttl=60, max_entries=3, max_bytes=2**20)
    for i in range(5):
        cache.put(bytes([i]) * 16, dedup.Reply(protocol.encode_result(bytes([i]) * 16, i), attempt=1))
    assert len(cache) == 3
    assert cache.get(b"\x00" * 16) is None
    stored = cache.get(b"\x04" * 16)
    assert stored is not None
    assert stored.succeeded

    short = dedup.ReplyCache(ttl=0.05, max_entries=100, max_bytes=2**20)
    short.put(b"a" * 16, dedup.Reply(protocol.encode_error(b"a" * 16, errors.Busy("x")), attempt=2))
    assert short.get(b"a" * 16) == dedup.Reply(protocol.encode_error(b"a" * 16, errors.Busy("x")), attempt=2)
    time.sleep(0.1)
    assert short.get(b"a" * 16) is None
    short.put(b"b" * 16, dedup.Reply([b"SZ1", b"RESULT"], attempt=1))
    assert len(short) == 1


def _result(call_id: bytes, size: int) -> dedup.Reply:
    return dedup.Reply(protocol.encode_result(call_id, "x" * size), attempt=1)


def test_reply_cache_is_bounded_in_bytes_and_evicts_the_largest_first() -> None:
    """Any caller chooses its replies' size: the bound in bytes keeps memory in check, and dropping
    the largest first keeps the dedup of the many ordinary calls."""
    cache = dedup.ReplyCache(ttl=60, max_entries=10_000, max_bytes=100_000)
    small = [bytes([i]) * 16 for i in range(50)]
    for call_id in small:
        cache.put(call_id, _result(call_id, 100))
    for i in range(20):
        cache.put(b"L" * 15 + bytes([i]), _result(b"L" * 15 + bytes([i]), 30_000))
        assert cache.bytes <= 100_000
    assert all(cache.get(call_id) is not None for call_id in small)
    assert sum(cache.get(b"L" * 15 + bytes([i])) is not None for i in range(20)) <= 3
    cache.put(b"H" * 16, _result(b"H" * 16, 200_000))  # larger than the whole bound: never kept
    assert cache.get(b"H" * 16) is None
    assert cache.bytes <= 100_000


def test_reply_cache_shrinks_to_what_a_resend_still_needs() -> None:
    cache = dedup.ReplyCache(ttl=60, max_entries=100, max_bytes=2**20)
    cache.put(b"r" * 16, _result(b"r" * 16, 10))
    cache.put(b"e" * 16, dedup.Reply(protocol.encode_error(b"e" * 16, errors.Busy("x")), attempt=1))
    cache.shrink()
    assert cache.get(b"r" * 16) is not None
    assert cache.get(b"e" * 16) is None
    assert cache.bytes == _result(b"r" * 16, 10).size
