"""The operator's per-Schedule series, scraped over HTTP from an engine running real Schedules.

What a user with many Schedules relies on: each Schedule costs a handful of
series (docs/operations.md), no per-Schedule histogram unless asked for, and a
deleted Schedule leaves nothing behind. The text served is parsed with
prometheus_client's parser, as Prometheus would read it.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from schedulezero_handler import client as client_
from schedulezero_operator import engine as engine_
from schedulezero_operator.metrics import OperatorMetrics
from schedulezero_operator.sinks import ScheduleKey
from tests.support import controlplane, processes
from tests.support.engines import MemorySink, eventually

PROBE = "tests.support.handlers:ProbeHandler"
NAMESPACE = "metrics"
MIXED = ScheduleKey(NAMESPACE, "mixed")
PAUSED = ScheduleKey(NAMESPACE, "paused")
SERIES_PER_SCHEDULE = 5
"""The most series a Schedule with a few outcomes may have by default (docs/operations.md)."""
T = TypeVar("T")


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path_factory.mktemp("schedule-metrics")) as process:
        yield process


class Served:
    """An engine whose metrics are served on a port of their own."""

    def __init__(self, engine: engine_.Engine, port: int) -> None:
        self.engine, self.port = engine, port

    async def samples(self) -> list[Sample]:
        """Every sample of ``/metrics``, as Prometheus' text parser reads it."""
        text = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{self.port}/metrics")
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    async def of(self, key: ScheduleKey) -> list[Sample]:
        return [s for s in await self.samples() if s.labels.get("schedule") == key.name]


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


async def served_engine(
    handler: processes.HandlerProcess, client: client_.Client, **options: Any
) -> AsyncIterator[Served]:
    metrics = OperatorMetrics(**options)
    engine = engine_.Engine(
        client=client,
        status_sink=MemorySink(),
        metrics=metrics,
        settings=engine_.EngineSettings(status_interval=0.2),
    )
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.endpoint))
    port = controlplane.free_port()
    server = metrics.serve(port=port, address="127.0.0.1")
    await engine.start()
    try:
        yield Served(engine, port)
    finally:
        await engine.stop()
        server.shutdown()
        server.server_close()


@pytest.fixture
async def served(handler: processes.HandlerProcess, client: client_.Client) -> AsyncIterator[Served]:
    async for built in served_engine(handler, client):
        yield built


@pytest.fixture
async def served_with_histograms(handler: processes.HandlerProcess, client: client_.Client) -> AsyncIterator[Served]:
    async for built in served_engine(handler, client, per_schedule_histograms=True):
        yield built


def apply(engine: engine_.Engine, key: ScheduleKey, spec: dict[str, Any]) -> None:
    created = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    full = {"handler": "probe", "schedule": "@every 1s", **spec}
    assert engine.apply_schedule(key, uid=f"uid-{key.name}", spec=full, created=created) is None


async def until(check: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    """``check()``'s first true answer: each one a scrape."""
    async with asyncio.timeout(timeout):
        while not (answer := await check()):  # noqa: ASYNC110  (runs end in other tasks and processes)
            await asyncio.sleep(0.2)
    return answer


def outcomes(samples: list[Sample]) -> set[str]:
    return {s.labels["outcome"] for s in samples if s.name == "schedulezero_schedule_runs_total"}


async def run_with_a_few_outcomes(served: Served) -> None:
    """MIXED succeeds, skips (a run of 1.5 s every second under Forbid) and fails; PAUSED is suspended."""
    apply(served.engine, PAUSED, {"method": "tick", "suspend": True})
    apply(served.engine, MIXED, {"method": "tick", "params": {"seconds": 1.5}})

    async def seen(wanted: set[str]) -> bool:
        return wanted <= outcomes(await served.of(MIXED))

    await until(lambda: seen({"Succeeded", "Skipped"}))
    failing = {"method": "fail", "params": {"message": "on purpose"}, "retry": {"maxAttempts": 1}}
    apply(served.engine, MIXED, failing)
    await until(lambda: seen({"Failed"}))


async def test_a_schedule_with_a_few_outcomes_has_at_most_five_series_and_no_histogram_of_its_own(
    served: Served,
) -> None:
    await run_with_a_few_outcomes(served)
    samples = await served.samples()
    per_schedule = collections.Counter(s.labels["schedule"] for s in samples if "schedule" in s.labels)
    assert per_schedule[MIXED.name] <= SERIES_PER_SCHEDULE, [s for s in samples if "schedule" in s.labels]
    assert per_schedule[PAUSED.name] == 1  # suspended, and nothing else: it has no next run
    mixed = {(s.name, s.labels.get("outcome")): s.value for s in samples if s.labels.get("schedule") == MIXED.name}
    assert {name for name, _ in mixed} == {
        "schedulezero_schedule_runs_total",  # only for the outcomes that happened
        "schedulezero_schedule_next_run_timestamp_seconds",
        "schedulezero_schedule_last_success_timestamp_seconds",
    }
    assert outcomes(await served.of(MIXED)) == {"Succeeded", "Skipped", "Failed"}
    assert mixed["schedulezero_schedule_next_run_timestamp_seconds", None] > datetime.datetime.now().timestamp() - 5
    assert [s.value for s in samples if s.labels.get("schedule") == PAUSED.name] == [1.0]

    # Durations per handler and method: every run that called the handler, whichever Schedule it was.
    durations = {
        (s.labels.get("handler"), s.labels.get("method")): s.value
        for s in samples
        if s.name == "schedulezero_schedule_run_duration_seconds_count"
    }
    assert set(durations) == {(f"{NAMESPACE}/probe", "tick"), (f"{NAMESPACE}/probe", "fail")}
    assert durations[f"{NAMESPACE}/probe", "tick"] >= 1


async def test_served_text_and_the_registry_agree(served: Served) -> None:
    """/metrics is rendered without prometheus_client's formatting; its Python API must show the same."""
    await run_with_a_few_outcomes(served)
    served.engine.run_now(MIXED, "token-1")
    await eventually(lambda: served.engine.metrics.registry.get_sample_value(
        "schedulezero_schedule_requested_runs_total",
        {"namespace": NAMESPACE, "schedule": MIXED.name, "trigger": "run-now", "outcome": "Failed"},
    ))  # fmt: skip
    await asyncio.sleep(0)
    api = {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in served.engine.metrics.registry.collect()
        for s in family.samples
        if "schedule" in s.labels
    }
    text = {
        (s.name, tuple(sorted(s.labels.items())), s.value) for s in await served.samples() if "schedule" in s.labels
    }
    changing = {"schedulezero_schedule_runs_total", "schedulezero_schedule_next_run_timestamp_seconds"}
    assert {x for x in text if x[0] not in changing} == {x for x in api if x[0] not in changing}
    assert {x[:2] for x in text} == {x[:2] for x in api}


async def test_per_schedule_histograms_when_asked_for(served_with_histograms: Served) -> None:
    apply(served_with_histograms.engine, MIXED, {"method": "tick"})

    async def buckets() -> list[Sample]:
        return [s for s in await served_with_histograms.of(MIXED) if s.name.endswith("_bucket")]

    found = await until(buckets)
    assert {s.name for s in found} == {"schedulezero_schedule_run_duration_seconds_bucket"}
    assert {(s.labels["namespace"], s.labels["handler"], s.labels["method"]) for s in found} == {
        (NAMESPACE, f"{NAMESPACE}/probe", "tick")
    }


@pytest.fixture(params=[False, True], ids=["default", "per-schedule-histograms"])
async def either(
    handler: processes.HandlerProcess, client: client_.Client, request: pytest.FixtureRequest
) -> AsyncIterator[Served]:
    async for built in served_engine(handler, client, per_schedule_histograms=request.param):
        yield built


async def test_a_deleted_schedules_series_disappear(either: Served) -> None:
    apply(either.engine, MIXED, {"method": "tick"})
    apply(either.engine, PAUSED, {"method": "tick", "suspend": True})

    async def succeeded() -> bool:
        return "schedulezero_schedule_last_success_timestamp_seconds" in {s.name for s in await either.of(MIXED)}

    await until(succeeded)
    either.engine.remove_schedule(MIXED)
    either.engine.remove_schedule(PAUSED)
    assert await either.of(MIXED) == []
    assert await either.of(PAUSED) == []
    # What is not the Schedule's own stays: the call counts and, by default, the handler's durations.
    names = {s.name for s in await either.samples()}
    assert "schedulezero_rpc_calls_total" in names
    per_schedule = either.engine.metrics.per_schedule_histograms
    assert ("schedulezero_schedule_run_duration_seconds_count" in names) is not per_schedule
