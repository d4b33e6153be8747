"""A graceful handover that does not wait for the status backlog: run records travel in the final checkpoint.

A stopping replica releases its shards at once; the run records its status
writes have not carried yet go to the next owner in the shard's final
checkpoint (through its real encoding), and the next owner writes them, each
once, without running those runs again. Deliveries are judged at a real
handler with no reply cache, so a run sent again would show.
"""

from __future__ import annotations

import datetime
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from schedulezero_handler import client as client_
from schedulezero_operator import checkpoints, sinks
from schedulezero_operator import engine as engine_
from schedulezero_operator.sinks import ScheduleKey
from tests.support import deliveries, processes
from tests.support.engines import MemorySink, Ownership, eventually, now

PROBE = "tests.support.handlers:ProbeHandler"
NAMESPACE = "handover"
UID = "uid-handover"
KEY = ScheduleKey(NAMESPACE, "every-second")
SPEC = {
    "handler": "probe",
    "method": "tick",
    "schedule": "@every 1s",
    "successfulRunsHistoryLimit": 20,
    "failedRunsHistoryLimit": 20,
}


class RefusingSink(MemorySink):
    """An API server that refuses every status write (a backlog that never drains, as under the budget)."""

    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        raise sinks.WriteConflict("refused by the test")


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[processes.HandlerProcess, pathlib.Path]]:
    directory = tmp_path_factory.mktemp("handover")
    path = directory / "journal.jsonl"
    with processes.running_handler(PROBE, directory, "--reply-cache-size", "0", "--journal", str(path)) as process:
        yield process, path


@pytest.fixture
async def client() -> AsyncIterator[client_.Client]:
    async with client_.Client() as c:
        yield c


def replica(
    client: client_.Client, sink: MemorySink, ownership: Ownership, endpoint: str, identity: str
) -> engine_.Engine:
    settings = engine_.EngineSettings(status_interval=0.2, identity=identity)
    engine = engine_.Engine(client=client, status_sink=sink, events=sink, settings=settings, owner=ownership)
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(endpoint))
    return engine


async def test_a_stopping_replica_hands_its_unwritten_run_records_to_the_next_owner(
    journal: tuple[processes.HandlerProcess, pathlib.Path], client: client_.Client
) -> None:
    handler, path = journal
    created = now() - datetime.timedelta(seconds=5)
    old_owner, new_owner = Ownership(owned=True), Ownership(owned=False)
    refusing, written = RefusingSink(), MemorySink()
    first = replica(client, refusing, old_owner, handler.endpoint, "first")
    second = replica(client, written, new_owner, handler.endpoint, "second")
    for engine in (first, second):
        await engine.start()
        assert engine.apply_schedule(KEY, uid=UID, spec=dict(SPEC), created=created) is None
    try:
        await eventually(lambda: len((first.render_status(KEY) or {}).get("runs", [])) >= 3)
    finally:
        await first.stop(flush=False)  # none of its statuses was ever written
    try:
        old_owner.owned = False
        uid, progress = first.progress(KEY, records=True) or ("", engine_.Progress(None))
        assert progress.records, "the unwritten run records are in the final checkpoint"
        handed = checkpoints.decode(checkpoints.encode({uid: progress}))
        ran = {record["runId"] for record in progress.records}

        new_owner.owned = True
        await second.take_over([KEY], handed)
        status = await eventually(lambda: written.statuses.get(KEY))
        assert ran <= {record["runId"] for record in status["runs"]}, "the next owner writes the handed records"
        assert status["counters"]["succeeded"] >= len(ran)
    finally:
        await second.stop()
    calls = [d.call for d in deliveries.read(path) if d.schedule == str(KEY)]
    again = sorted(run_id for run_id in ran if calls.count(uuid.UUID(run_id).hex) > 1)
    assert not again, f"runs the first owner finished were sent again: {again}"
    assert {uuid.UUID(run_id).hex for run_id in ran} <= set(calls), "the records are of runs the handler served"


async def test_records_a_status_write_carried_are_not_handed_over(
    journal: tuple[processes.HandlerProcess, pathlib.Path], client: client_.Client
) -> None:
    handler, _ = journal
    key = ScheduleKey(NAMESPACE, "written")
    sink = MemorySink()
    engine = replica(client, sink, Ownership(owned=True), handler.endpoint, "writer")
    await engine.start()
    try:
        spec = {**SPEC, "schedule": "@every 1s"}
        assert engine.apply_schedule(key, uid="uid-written", spec=spec, created=now()) is None
        await eventually(lambda: len(sink.statuses.get(key, {}).get("runs", [])) >= 2)
    finally:
        await engine.stop(flush=False)
    _, progress = engine.progress(key, records=True) or ("", engine_.Progress(None))
    carried = {record["runId"] for record in sink.statuses[key]["runs"]}
    assert carried, "statuses were written"
    assert not carried & {record["runId"] for record in progress.records}
