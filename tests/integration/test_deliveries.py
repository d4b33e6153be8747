"""What a handler says of second deliveries: counted, journalled with their sender, exported by the conductor.

The operator's call id is the run id, so a run delivered twice arrives under
one call id; the handler answers it from its reply cache, or joins it to the
call still running, without running the method again. These tests make sure
that such a second delivery is never invisible.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from typing import Any

import pytest

from schedulezero_handler import client as client_
from schedulezero_handler import protocol
from tests.support import conductor, deliveries, processes
from tests.support.waiting import eventually

PROBE = "tests.support.handlers:ProbeHandler"


def tick(call_id: bytes, *, sender: str, seconds: float = 0.0, resent: bool = False) -> protocol.Call:
    return protocol.Call(
        call_id=call_id,
        method="tick",
        params={"seconds": seconds},
        timeout_ms=10_000,
        schedule="ns/s",
        scheduled_time="2026-01-31T06:00:00Z",
        sender=sender,
        resent=resent,
    )


async def send(endpoint: str, *calls: protocol.Call) -> list[Any]:
    async with client_.Client() as client:
        return list(await asyncio.gather(*(client.attempt(endpoint, call) for call in calls)))


async def metrics(endpoint: str) -> dict[str, Any]:
    async with client_.Client() as client:
        result: dict[str, Any] = await client.call(endpoint, "sys.metrics", timeout=10)
        return result


async def test_second_deliveries_are_counted_and_journalled_with_their_senders(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "journal.jsonl"
    with processes.running_handler(PROBE, tmp_path, "--journal", str(journal)) as handler:
        run, other = uuid.uuid4().bytes, uuid.uuid4().bytes
        # Two replicas deliver one run at once (joined), then a third time after it ended (cached).
        await send(handler.endpoint, tick(run, sender="a", seconds=0.5), tick(run, sender="b"))
        await send(handler.endpoint, tick(run, sender="c", resent=True), tick(other, sender="a"))
        assert (await metrics(handler.endpoint))["duplicate_calls"] == {"tick": 2}
    sent = deliveries.read(journal)
    assert [(d.sender, d.answer, d.resent) for d in sent if d.call == run.hex()] == [
        ("a", "run", False),
        ("b", "joined", False),
        ("c", "cached", True),
    ]
    assert [d.answer for d in sent if d.call == other.hex()] == ["run"]
    runs = deliveries.by_run([d for d in sent if d.call == run.hex()])
    assert set(deliveries.double_fired(runs)) == {("ns/s", "2026-01-31T06:00:00Z")}  # a and b both fired it


async def test_without_a_reply_cache_every_delivery_runs(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "journal.jsonl"
    with processes.running_handler(PROBE, tmp_path, "--reply-cache-size", "0", "--journal", str(journal)) as handler:
        run = uuid.uuid4().bytes
        for sender in ("a", "b"):
            await send(handler.endpoint, tick(run, sender=sender))
        assert (await metrics(handler.endpoint)).get("duplicate_calls") == {}
    assert [(d.sender, d.answer) for d in deliveries.read(journal)] == [("a", "run"), ("b", "run")]


def test_a_negative_reply_cache_size_is_refused_naming_it(tmp_path: pathlib.Path) -> None:
    with pytest.raises(RuntimeError, match="--reply-cache-size must be 0 or more, not -1"):
        processes.start_handler(PROBE, tmp_path, "--reply-cache-size", "-1")


def test_the_conductor_exports_duplicate_calls(tmp_path: pathlib.Path) -> None:
    handler = processes.start_handler(PROBE, tmp_path)
    config = tmp_path / "conductor.yaml"
    config.write_text(f"handlers:\n- name: alpha\n  endpoint: {handler.endpoint}\n")
    running = conductor.start_conductor(tmp_path, config=config)
    try:
        run = uuid.uuid4().bytes
        asyncio.run(send(handler.endpoint, tick(run, sender="a")))
        asyncio.run(send(handler.endpoint, tick(run, sender="b")))
        eventually(
            lambda: running.value("schedulezero_handler_duplicate_calls_total", handler="alpha", method="tick") == 1.0
        )
    finally:
        running.stop()
        handler.kill()
