"""Building the status: history limits, the result cut, conditions, and the restart round trip."""

from __future__ import annotations

import asyncio
import datetime
import json

from schedulezero_operator import sinks, status

T0 = datetime.datetime(2026, 11, 28, 6, 0, tzinfo=datetime.UTC)


def record(minute: int, outcome: status.Outcome) -> status.RunRecord:
    at = T0 + datetime.timedelta(minutes=minute)
    return status.RunRecord(
        run_id=f"r{minute}", scheduled_time=at, outcome=outcome, start_time=at, finish_time=at, attempts=1
    )


def test_history_keeps_the_newest_of_each_kind_within_its_limit() -> None:
    history = status.History()
    kinds = [status.Outcome.SUCCEEDED, status.Outcome.FAILED, status.Outcome.SKIPPED, status.Outcome.MISSED]
    for minute in range(12):
        history.record(record(minute, kinds[minute % 4]), successful_limit=3, failed_limit=2)
    # successful kinds (Succeeded, Skipped) at even minutes keep 10, 8, 6; failed kinds keep 11, 9
    assert [r.run_id for r in history.runs] == ["r11", "r10", "r9", "r8", "r6"]
    assert history.counters == {"succeeded": 3, "failed": 3, "missed": 3, "skipped": 3}
    assert history.last_successful_time == T0 + datetime.timedelta(minutes=8)
    assert history.last_failure_time == T0 + datetime.timedelta(minutes=9)


def test_late_finishing_runs_are_ordered_by_scheduled_time() -> None:
    history = status.History()
    history.record(record(5, status.Outcome.SUCCEEDED), successful_limit=3, failed_limit=3)
    history.record(record(1, status.Outcome.SUCCEEDED), successful_limit=3, failed_limit=3)
    assert [r.run_id for r in history.runs] == ["r5", "r1"]


def test_results_are_cut_at_4_kib_with_a_marker() -> None:
    assert status.cut_result({"a": [1, 2]}) == '{"a":[1,2]}'
    cut = status.cut_result({"blob": "é" * 5000})
    assert len(cut.encode()) <= status.RESULT_LIMIT
    assert cut.endswith(status.TRUNCATED)
    assert cut.startswith('{"blob":"éé')


def test_condition_transition_time_changes_only_with_its_status() -> None:
    history = status.History()
    history.set_condition("Ready", "True", "Scheduled", "next at 1", now=T0, generation=1)
    history.set_condition("Ready", "True", "Scheduled", "next at 2", now=T0 + datetime.timedelta(hours=1), generation=1)
    assert history.conditions["Ready"].last_transition_time == T0
    later = T0 + datetime.timedelta(hours=2)
    history.set_condition("Ready", "False", "Suspended", "", now=later, generation=2)
    assert history.conditions["Ready"].last_transition_time == later


def test_restore_reads_back_what_render_writes() -> None:
    history = status.History(last_schedule_time=T0, last_run_now_token="tok")
    history.record(record(0, status.Outcome.SUCCEEDED), successful_limit=3, failed_limit=3)
    failed = record(1, status.Outcome.FAILED)
    failed.error = {"type": "HandlerError", "message": "boom"}
    history.record(failed, successful_limit=3, failed_limit=3)
    history.set_condition("Ready", "True", "Scheduled", "ok", now=T0, generation=4)
    rendered = json.loads(json.dumps(history.render()))  # as it travels through the API server
    again = status.History.restore(rendered)
    assert again.render() == rendered
    assert again.last_schedule_time == T0


def test_restore_survives_garbage() -> None:
    restored = status.History.restore(
        {"runs": [{"runId": 3}, "x", {"runId": "a", "scheduledTime": "nope", "outcome": "Succeeded"}],
         "counters": {"succeeded": -4, "failed": "many"}, "lastScheduleTime": 12, "conditions": [None]}
    )  # fmt: skip
    assert restored.runs == []
    assert restored.counters == {"succeeded": 0, "failed": 0, "missed": 0, "skipped": 0}
    assert restored.last_schedule_time is None


class CountingSink:
    def __init__(self) -> None:
        self.writes: list[str] = []

    async def write_status(self, key: sinks.ScheduleKey, status: dict[str, object]) -> None:
        self.writes.append(key.name)


async def test_status_writer_coalesces_and_forgets() -> None:
    sink = CountingSink()
    writer = sinks.StatusWriter(sink, lambda key: {"k": key.name}, interval=0.2)
    writer.start()
    a, b = sinks.ScheduleKey("ns", "a"), sinks.ScheduleKey("ns", "b")
    for _ in range(100):
        writer.mark(a)
    await asyncio.sleep(0.05)
    assert sink.writes == ["a"]  # a burst of changes: one write
    writer.mark(a)
    writer.forget(a)  # removed while a write was pending...
    writer.mark(a)  # ...and re-created: one pending write, not two
    await asyncio.sleep(0.5)
    assert sink.writes == ["a", "a"]
    writer.mark(a)
    await asyncio.sleep(0.1)
    writer.mark(a)
    writer.mark(b)
    async with asyncio.timeout(5):  # stop returns, flushing what is pending
        await writer.stop()
    # a at once (its last write was long ago), b at once, and the a still pending flushed by stop
    assert sorted(sink.writes[2:]) == ["a", "a", "b"]


class SlowSink:
    """Writes that take a while, as under a loaded API server; notes any overlap per Schedule."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int]] = []
        self.in_flight: set[str] = set()
        self.overlapped = False

    async def write_status(self, key: sinks.ScheduleKey, status: dict[str, object]) -> None:
        self.overlapped |= key.name in self.in_flight
        self.in_flight.add(key.name)
        await asyncio.sleep(0.1 if int(str(status["version"])) % 2 else 0.01)  # replies come out of order
        self.in_flight.discard(key.name)
        self.writes.append((key.name, int(str(status["version"]))))


async def test_a_status_is_rendered_when_sent_and_one_write_per_schedule_is_in_flight() -> None:
    """Rendered when marked and sent after a wait, an older status could land after a newer one."""
    sink, versions = SlowSink(), {"a": 0, "b": 0}
    writer = sinks.StatusWriter(sink, lambda key: {"version": versions[key.name]}, interval=0.01, concurrency=4)
    writer.start()
    a, b = sinks.ScheduleKey("ns", "a"), sinks.ScheduleKey("ns", "b")
    for _ in range(20):
        for key in (a, b):
            versions[key.name] += 1
            writer.mark(key)
        await asyncio.sleep(0.02)
    async with asyncio.timeout(5):
        await writer.stop()
    assert not sink.overlapped
    for name in ("a", "b"):
        written = [version for key, version in sink.writes if key == name]
        assert written == sorted(written)
        assert written[-1] == 20  # the last state reached the sink


def test_a_backfills_progress_survives_a_restart_as_the_crd_has_it() -> None:
    """What the engine needs to answer the same annotation once (its request), every state the CRD admits,
    and nothing it does not: a field of another type would fail every status write after."""
    cancelled = {"request": "{}", "from": "a", "to": "b", "total": 3, "done": 1, "state": "Cancelled"}
    assert status.History.restore({"backfill": cancelled}).backfill == cancelled
    refused = {"request": "not json", "total": 0, "done": 0, "state": "Refused", "message": "not a request"}
    assert status.History.restore({"backfill": refused}).backfill == refused
    running = {"from": "a", "to": "b", "total": 2, "done": 1, "state": "Running", "extra": 1, "done2": True}
    restored = status.History.restore({"backfill": {**running, "total": "2"}}).backfill
    assert restored == {"from": "a", "to": "b", "done": 1, "state": "Interrupted"}
