"""An idle Schedule's status is written when something a user can see changes, not on every Handler probe."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import pytest

from schedulezero_handler import client as client_
from schedulezero_operator import engine as engine_
from schedulezero_operator.sinks import ScheduleKey
from tests.support.engines import MemorySink, eventually, now


@pytest.fixture
async def engine() -> AsyncIterator[tuple[engine_.Engine, MemorySink]]:
    sink = MemorySink()
    async with client_.Client() as client:
        settings = engine_.EngineSettings(status_interval=0.1, status_settle=0.05)
        engine = engine_.Engine(client=client, status_sink=sink, events=sink, settings=settings)
        await engine.start()
        yield engine, sink
        await engine.stop()


def idle_schedules(running: engine_.Engine, count: int) -> list[ScheduleKey]:
    """``count`` Schedules ``@every 1h`` of a Handler that a probe found exposing their method."""
    probed = engine_.HandlerInfo("tcp://127.0.0.1:9", methods=frozenset({"tick"}), reachable=True)
    running.set_handler("idle", "probe", probed)
    keys = [ScheduleKey("idle", f"s{i}") for i in range(count)]
    for key in keys:
        spec = {"handler": "probe", "method": "tick", "schedule": "@every 1h"}
        assert running.apply_schedule(key, uid=f"uid-{key.name}", spec=spec, created=now()) is None
    return keys


async def test_probes_that_find_the_handler_as_it_was_write_no_status(
    engine: tuple[engine_.Engine, MemorySink],
) -> None:
    running, sink = engine
    keys = idle_schedules(running, 20)
    await eventually(lambda: set(sink.statuses) == set(keys))
    await asyncio.sleep(0.5)
    written = sink.writes
    for _ in range(10):  # ten probe rounds, each finding the Handler as it was
        running.set_handler("idle", "probe", engine_.HandlerInfo("tcp://127.0.0.1:9", frozenset({"tick"}), None, True))
        await asyncio.sleep(0.2)
    assert sink.writes == written
    # A probe that finds something new is written, once per Schedule.
    running.set_handler("idle", "probe", engine_.HandlerInfo("tcp://127.0.0.1:9", frozenset({"tock"}), None, True))
    await eventually(lambda: sink.writes == written + len(keys))
    ready = {c["type"]: c["reason"] for c in sink.statuses[keys[0]]["conditions"]}["Ready"]
    assert ready == "MethodNotFound"


async def test_a_probe_that_finds_the_handler_as_it_was_looks_only_at_schedules_with_no_next_run(
    engine: tuple[engine_.Engine, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 100,000 Schedules, recomputing every Schedule's conditions on each probe held the event loop for a
    second. A Schedule with a next run shows nothing a probe finding the Handler as it was can change; one
    whose times ran out still turns from NoTimeLeft to EndTimeReached on such a probe, once endTime passes."""
    running, sink = engine
    keys = idle_schedules(running, 1_000)
    ending = ScheduleKey("idle", "ending")
    end = now() + datetime.timedelta(seconds=1)
    spec = {"handler": "probe", "method": "tick", "schedule": "@every 1h", "endTime": end.isoformat()}
    assert running.apply_schedule(ending, uid="uid-ending", spec=spec, created=now()) is None
    await eventually(lambda: set(sink.statuses) == {*keys, ending})
    completed = {c["type"]: c["reason"] for c in sink.statuses[ending]["conditions"]}["Completed"]
    assert completed == "NoTimeLeft"
    judged: list[ScheduleKey] = []
    readiness = running._readiness

    def counted(state: engine_.ScheduleState, completed: tuple[str, str] | None) -> tuple[str, str, str]:
        judged.append(state.key)
        return readiness(state, completed)

    monkeypatch.setattr(running, "_readiness", counted)
    await asyncio.sleep(max(0.0, (end - now()).total_seconds()) + 0.1)
    running.set_handler("idle", "probe", engine_.HandlerInfo("tcp://127.0.0.1:9", frozenset({"tick"}), None, True))
    assert judged == [ending]
    await eventually(
        lambda: {c["type"]: c["reason"] for c in sink.statuses[ending]["conditions"]}["Completed"] == "EndTimeReached"
    )
    # A probe that finds something new looks at every Schedule.
    running.set_handler("idle", "probe", engine_.HandlerInfo("tcp://127.0.0.1:9", frozenset({"tock"}), None, True))
    assert len(judged) == 1 + len(keys) + 1
