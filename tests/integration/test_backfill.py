"""Backfill at the engine itself, against a real handler process.

The ``kubectl schedulezero backfill`` plugin refuses a range of more than
1,000 times before writing anything, so the engine's own bound (the one a
plain ``kubectl annotate`` meets) and the ``Interrupted`` state are reached
here by driving the engine directly: its own refusal, a backfill cut short
by losing the Schedule (and by a restart of the operator), and the
``schedulezero_schedule_requested_runs_total`` counter.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from schedulezero_handler import client as client_
from schedulezero_operator import engine as engine_
from schedulezero_operator.sinks import ScheduleKey
from tests.support import processes
from tests.support.engines import MemorySink, Ownership

PROBE = "tests.support.handlers:ProbeHandler"
NAMESPACE = "fill"
_names = itertools.count()


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path_factory.mktemp("backfill")) as process:
        yield process


@pytest.fixture
async def client() -> AsyncIterator[client_.Client]:
    async with client_.Client() as c:
        yield c


def new_engine(
    handler: processes.HandlerProcess, client: client_.Client, sink: MemorySink, owner: Ownership
) -> engine_.Engine:
    engine = engine_.Engine(
        client=client,
        status_sink=sink,
        events=sink,
        owner=owner,
        settings=engine_.EngineSettings(status_interval=0.2),
    )
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.endpoint))
    return engine


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def owner() -> Ownership:
    return Ownership(owned=True)


@pytest.fixture
async def engine(
    handler: processes.HandlerProcess, client: client_.Client, sink: MemorySink, owner: Ownership
) -> AsyncIterator[engine_.Engine]:
    engine = new_engine(handler, client, sink, owner)
    await engine.start()
    yield engine
    await engine.stop()


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def request(start: datetime.datetime, end: datetime.datetime) -> str:
    """The schedulezero.io/backfill annotation's value, as a user writes it with kubectl annotate."""
    return json.dumps({"from": rfc3339(start), "to": rfc3339(end)})


def apply(
    engine: engine_.Engine, spec: dict[str, Any], created: datetime.datetime, status: dict[str, Any] | None = None
) -> ScheduleKey:
    key = ScheduleKey(NAMESPACE, f"b{next(_names)}")
    return reapply(engine, key, spec, created, status)


def reapply(
    engine: engine_.Engine,
    key: ScheduleKey,
    spec: dict[str, Any],
    created: datetime.datetime,
    status: dict[str, Any] | None = None,
) -> ScheduleKey:
    full = {"handler": "probe", "successfulRunsHistoryLimit": 100, **spec}
    assert engine.apply_schedule(key, uid=f"uid-{key.name}", spec=full, created=created, status_=status) is None
    return key


def backfill_status(engine: engine_.Engine, key: ScheduleKey) -> dict[str, Any]:
    status = engine.render_status(key)
    assert status is not None
    return dict(status.get("backfill") or {})


async def backfilled(
    client: client_.Client, handler: processes.HandlerProcess, key: ScheduleKey, until: datetime.datetime
) -> list[datetime.datetime]:
    """The nominal times up to ``until`` the handler ran for ``key``: the backfill's, not the schedule's own."""
    seen = await client.call(handler.endpoint, "ticks_seen")
    nominal = [datetime.datetime.fromisoformat(t["scheduled"]) for t in seen if t["schedule"] == str(key)]
    return sorted(moment for moment in nominal if moment <= until)


async def eventually(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := predicate()):  # noqa: ASYNC110  (state changed by other tasks and processes)
            await asyncio.sleep(0.05)
    return result


def requested(engine: engine_.Engine, key: ScheduleKey, trigger: str, outcome: str = "Succeeded") -> float:
    labels = {"namespace": key.namespace, "schedule": key.name, "trigger": trigger, "outcome": outcome}
    value = engine.metrics.registry.get_sample_value("schedulezero_schedule_requested_runs_total", labels)
    return value or 0.0


async def test_the_engine_itself_refuses_more_than_1000_times_and_runs_1000(
    engine: engine_.Engine, sink: MemorySink, client: client_.Client, handler: processes.HandlerProcess
) -> None:
    """What a plain kubectl annotate meets: the plugin's own check never ran."""
    created = (now() - datetime.timedelta(hours=20)).replace(microsecond=0)
    key = apply(engine, {"method": "tick", "schedule": "@every 1m"}, created)
    first = created + datetime.timedelta(minutes=1)  # the creation is not a run; the first is one interval later
    too_many = request(first, first + datetime.timedelta(minutes=1000))  # 1,001 times
    assert not engine.backfill(key, too_many)
    progress = backfill_status(engine, key)
    assert progress["state"] == "Refused"
    assert (progress["total"], progress["done"]) == (0, 0)
    assert f"more than 1000 times between {rfc3339(first)} and " in progress["message"]
    assert "split the range" in progress["message"]
    assert [reason for k, reason, _ in sink.events if k == key] == ["BackfillRefused"]
    assert not engine.backfill(key, too_many)  # the same request again: refused once, not again
    assert [reason for k, reason, _ in sink.events if k == key] == ["BackfillRefused"]

    last = first + datetime.timedelta(minutes=999)
    enough = request(first, last)  # exactly 1,000: the bound itself
    assert engine.backfill(key, enough)
    progress = backfill_status(engine, key)
    assert (progress["state"], progress["total"]) == ("Running", 1000)
    await eventually(lambda: backfill_status(engine, key)["done"] >= 3)
    engine.backfill(key, None)  # the annotation removed: cancelled, no need to run the other 997
    assert backfill_status(engine, key)["state"] == "Cancelled"
    ran = await backfilled(client, handler, key, last)
    assert len(ran) >= 3
    assert ran == [first + datetime.timedelta(minutes=i) for i in range(len(ran))]  # in order, from the first


async def test_a_backfill_cut_short_by_losing_the_schedule_is_interrupted_and_not_resumed(
    engine: engine_.Engine,
    sink: MemorySink,
    owner: Ownership,
    client: client_.Client,
    handler: processes.HandlerProcess,
) -> None:
    """The engine stops the chain when its shard moves; the status it shows, and a restart shows, is Interrupted."""
    created = (now() - datetime.timedelta(hours=30, minutes=30)).replace(microsecond=0)  # next run in 30 min
    spec = {"method": "tick", "params": {"seconds": 0.3}, "schedule": "@every 1h"}
    key = apply(engine, spec, created)
    first, last = created + datetime.timedelta(hours=1), created + datetime.timedelta(hours=20)
    asked = request(first, last)  # 20 times, 0.3 s each
    assert engine.backfill(key, asked)
    await eventually(lambda: backfill_status(engine, key)["done"] >= 2)
    running = await eventually(lambda: (s := sink.statuses.get(key)) and (s.get("backfill") or {}).get("done") and s)
    assert running["backfill"]["state"] == "Running"  # what the API server holds when the operator goes

    owner.owned = False  # the shard moved: the chain stops after the run in flight
    await asyncio.sleep(1.5)
    ran = await backfilled(client, handler, key, last)
    await asyncio.sleep(1.5)
    assert await backfilled(client, handler, key, last) == ran, "backfill runs went on after the Schedule was lost"
    assert 2 <= len(ran) < 20

    owner.owned = True  # as the engine shows it again: Interrupted, with what was done
    progress = backfill_status(engine, key)
    assert progress["state"] == "Interrupted"
    assert progress["total"] == 20
    assert 2 <= progress["done"] < 20

    # An operator started afresh from the status written while it ran: Interrupted, not resumed.
    restarted = new_engine(handler, client, MemorySink(), Ownership(owned=True))
    await restarted.start()
    try:
        reapply(restarted, key, spec, created, status=running)
        assert backfill_status(restarted, key)["state"] == "Interrupted"
        assert backfill_status(restarted, key)["done"] == running["backfill"]["done"]
        assert not restarted.backfill(key, asked)  # the annotation, seen again at start: not resumed
        await asyncio.sleep(1.5)
        assert await backfilled(client, handler, key, last) == ran
    finally:
        await restarted.stop()


async def test_requested_runs_are_counted_by_trigger_and_outcome(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess
) -> None:
    created = (now() - datetime.timedelta(hours=10, minutes=30)).replace(microsecond=0)  # next run in 30 min
    key = apply(engine, {"method": "tick", "schedule": "@every 1h"}, created)
    last = created + datetime.timedelta(hours=3)
    assert engine.backfill(key, request(created + datetime.timedelta(hours=1), last))
    await eventually(lambda: backfill_status(engine, key)["state"] == "Complete")
    assert engine.run_now(key, "token-1")
    await eventually(lambda: requested(engine, key, "run-now") == 1)
    assert requested(engine, key, "backfill") == 3
    assert requested(engine, key, "backfill", "Failed") == 0
    runs = engine.metrics.registry.get_sample_value(
        "schedulezero_schedule_runs_total", {"namespace": NAMESPACE, "schedule": key.name, "outcome": "Succeeded"}
    )
    assert runs == 4  # counted with the others as well
    assert len(await backfilled(client, handler, key, last)) == 3
