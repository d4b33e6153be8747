"""Checkpoints: what a new shard owner reads back, and the object limit they must stay under."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid

import pytest

from schedulezero_operator import checkpoints, engine, runs
from schedulezero_operator.sinks import ScheduleKey

T = datetime.datetime(2026, 11, 30, 12, 0, 0, 250_000, tzinfo=datetime.UTC)


def test_progress_survives_a_round_trip_to_the_millisecond() -> None:
    """Run ids derive from nominal times: a time read back one millisecond off would run again."""
    progress = {
        "a": engine.Progress(T, (T - datetime.timedelta(seconds=1), T)),
        "b": engine.Progress(T + datetime.timedelta(milliseconds=1)),
        "c": engine.Progress(None, (T,)),
    }
    assert checkpoints.decode(checkpoints.encode(progress)) == progress
    assert checkpoints.decode(checkpoints.encode({"never": engine.Progress(None)})) == {}


def test_an_unreadable_checkpoint_holds_nothing_rather_than_failing_the_takeover() -> None:
    for text in (None, "", "not json", '{"schedules": {"a": ["x"]}}', '{"schedules": []}'):
        assert checkpoints.decode(text) == {}


def test_merge_keeps_the_latest_time_and_every_run_in_flight() -> None:
    later = T + datetime.timedelta(seconds=5)
    merged = checkpoints.merge(
        {"a": engine.Progress(T, (T,)), "b": engine.Progress(None)},
        {"a": engine.Progress(later, (later,)), "b": engine.Progress(T)},
    )
    assert merged == {"a": engine.Progress(later, (T, later)), "b": engine.Progress(T)}


def test_ten_thousand_schedules_fit_one_checkpoint() -> None:
    """The size the README promises per shard, with uids as Kubernetes makes them."""
    progress = {str(uuid.uuid4()): engine.Progress(T, (T,) if i % 10 == 0 else ()) for i in range(10_000)}
    assert len(checkpoints.encode(progress)) < 600_000


def test_ten_thousand_schedules_all_with_a_run_in_flight_take_the_documented_710_kb() -> None:
    """The figures the docs give: 55 bytes an entry, 71 with a run in flight, 14 more per further run.

    So 10,000 Schedules that all have a run in flight take 710 KB, and one
    checkpoint (at most ``MAX_SIZE``) holds just under 13,000 of them.
    """
    uids = [str(uuid.uuid4()) for _ in range(10_000)]
    idle = len(checkpoints.encode({uid: engine.Progress(T) for uid in uids}))
    one = len(checkpoints.encode({uid: engine.Progress(T, (T,)) for uid in uids}))
    two = len(checkpoints.encode({uid: engine.Progress(T, (T, T + datetime.timedelta(seconds=1))) for uid in uids}))
    assert round(idle / 10_000) == 55
    assert round(one / 10_000) == 71
    assert 705_000 <= one <= 715_000
    assert round((two - one) / 10_000) == 14
    fit = checkpoints.MAX_SIZE * 10_000 // one
    assert 12_900 <= fit < 13_000


async def test_a_shard_of_twelve_thousand_schedules_all_with_a_run_in_flight_is_written() -> None:
    """The docs' sizing advice (at most about 12,000 Schedules a shard) holds at 100% in flight."""
    keys = [ScheduleKey("ns", f"s{i}") for i in range(12_000)]
    uids = {key: str(uuid.uuid4()) for key in keys}
    store = Recording()
    writer = checkpoints.Checkpointer(
        store,
        progress=lambda key, records=False: (uids[key], engine.Progress(T, (T,))),
        shard_of=lambda key: 0,
        owns_shard=lambda shard: True,
    )
    for key in keys:
        writer.changed(key)
    await writer.flush()
    assert writer.oversized == set()
    assert len(store.written) == 1
    assert len(checkpoints.decode(store.written[0])) == 12_000
    assert all(progress.in_flight == (T,) for progress in checkpoints.decode(store.written[0]).values())


class Recording:
    def __init__(self) -> None:
        self.written: list[str] = []

    async def read(self, shard: int) -> tuple[str | None, str]:
        return None, ""

    async def write(self, shard: int, content: str, version: str) -> str:
        self.written.append(content)
        return str(len(self.written))


class NoWrites:
    async def read(self, shard: int) -> tuple[str | None, str]:
        return None, ""

    async def write(self, shard: int, content: str, version: str) -> str:
        raise AssertionError("an oversized checkpoint was sent")


async def test_a_checkpoint_above_the_object_limit_is_refused_loudly(caplog: pytest.LogCaptureFixture) -> None:
    keys = [ScheduleKey("ns", f"s{i}") for i in range(20_000)]
    uids = {key: str(uuid.uuid4()) for key in keys}
    writer = checkpoints.Checkpointer(
        NoWrites(),
        progress=lambda key, records=False: (uids[key], engine.Progress(T)),
        shard_of=lambda key: 0,
        owns_shard=lambda shard: True,
    )
    for key in keys:
        writer.changed(key)
    await writer.flush()
    assert writer.oversized == {0}
    assert "checkpoint of shard 0 is" in caplog.text
    assert "use more --shards" in caplog.text


async def test_a_new_owner_writes_back_only_its_own_schedules_believable_progress(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """935 KB of entries of no Schedule, a time in 2099 and an unreadable entry, read at a takeover: the first
    write holds the shard's own Schedules only, with believable times, and says what it left out."""
    far = datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)
    entries: dict[str, object] = {f"fake-{i}": [round(far.timestamp() * 1000) - i] for i in range(17_000)}
    entries["own"] = [round(far.timestamp() * 1000), [round(T.timestamp() * 1000)]]
    entries["broken"] = "x"
    store = Damaged(json.dumps({"version": 1, "schedules": entries}, separators=(",", ":")))
    key = ScheduleKey("ns", "own")
    writer = checkpoints.Checkpointer(
        store,
        progress=lambda key, records=False: ("own", engine.Progress(T)),
        shard_of=lambda key: 0,
        owns_shard=lambda shard: True,
    )
    writer.track(key)
    loaded = await writer.load(0)
    assert len(loaded) == 17_001  # all read: the engine judges them against the Schedule's trigger
    await writer.flush()  # written at once, though nothing changed since the takeover
    assert len(store.written) == 1
    assert checkpoints.decode(store.written[0]) == {"own": engine.Progress(T, (T,))}
    assert "17000 entries of no Schedule of the shard" in caplog.text


class Damaged(Recording):
    def __init__(self, content: str) -> None:
        super().__init__()
        self.content = content

    async def read(self, shard: int) -> tuple[str | None, str]:
        return self.content, "1"


async def test_a_quiet_shards_checkpoint_is_written_again_after_the_refresh_however_it_was_damaged() -> None:
    """Nothing changes in the shard, yet someone deleted or edited its checkpoint: the owner writes it again
    after ``refresh`` seconds, and only then."""
    store = Damaged(json.dumps({"schedules": {"fake": [1]}}))
    writer = checkpoints.Checkpointer(
        store,
        progress=lambda key, records=False: ("own", engine.Progress(T)),
        shard_of=lambda key: 0,
        owns_shard=lambda shard: True,
        refresh=0.2,
    )
    writer.track(ScheduleKey("ns", "own"))
    await writer.load(0)
    await writer.flush()
    writer.refresh_due()
    await writer.flush()
    assert len(store.written) == 1  # written at the takeover, and not again before the refresh
    await asyncio.sleep(0.3)
    writer.refresh_due()
    await writer.flush()
    assert len(store.written) == 2
    assert checkpoints.decode(store.written[1]) == {"own": engine.Progress(T)}


def test_handed_records_are_packed_to_half_and_read_back_as_status_shows_them() -> None:
    uid = "uid-packed"
    at = datetime.datetime(2026, 12, 3, 18, 0, tzinfo=datetime.UTC)
    scheduled = {
        "runId": str(runs.run_id(uid, at)), "scheduledTime": "2026-12-03T18:00:00.000Z", "outcome": "Succeeded",
        "attempts": 1, "startTime": "2026-12-03T18:00:00.004Z", "finishTime": "2026-12-03T18:00:00.011Z",
        "result": '"2026-12-03T18:00:00Z"', "endpoint": "tcp://198.18.130.7:5555",
    }  # fmt: skip
    asked = {"runId": "0f0e0d0c-0b0a-0908-0706-050403020100", "scheduledTime": "2026-12-03T18:00:05.000Z",
             "outcome": "Failed", "attempts": 3, "error": {"type": "Timeout", "message": "no answer"},
             "trigger": "run-now"}  # fmt: skip
    progress = {uid: engine.Progress(at, (), (scheduled, asked))}
    decoded = checkpoints.decode(checkpoints.encode(progress))[uid]
    assert decoded.records == (scheduled, asked)
    rendered = len(json.dumps([scheduled, asked], separators=(",", ":")))
    assert len(json.dumps(checkpoints.packed_records(uid, (scheduled, asked)), separators=(",", ":"))) < 0.55 * rendered


def test_run_records_fill_the_room_left_and_the_rest_are_named() -> None:
    """A final checkpoint carries unwritten run records up to its size limit; the Schedules whose records do
    not fit are named, so that their statuses are written before the shard is released."""
    record = {"runId": "r", "scheduledTime": "2026-01-01T00:00:00.000Z", "outcome": "Succeeded", "attempts": 1}
    at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    progress = {f"uid-{i}": engine.Progress(at, (), (record,) * (i + 1)) for i in range(4)}
    packed = [
        len(json.dumps(checkpoints.packed_records(f"uid-{n - 1}", (record,) * n), separators=(",", ":")))
        for n in (1, 2)
    ]
    room = sum(size + 1 for size in packed)  # two of four fit
    kept, over = checkpoints.fitting_records(progress, room)
    assert sorted(over) == ["uid-2", "uid-3"]
    assert [bool(kept[f"uid-{i}"].records) for i in range(4)] == [True, True, False, False]
    decoded = checkpoints.decode(checkpoints.encode(kept))
    assert decoded["uid-1"].records == (record, record)
    assert decoded["uid-3"].last_scheduled == at


async def test_a_graceful_stop_writes_each_shard_once_its_final_checkpoint_as_it_is_released() -> None:
    """Stopping writes nothing of its own: each shard's final checkpoint, written as the election releases the
    shard, has everything a write at the stop would, and a write before it would hold the release back."""
    keys = [ScheduleKey("ns", f"s{i}") for i in range(3)]
    store = Recording()
    writer = checkpoints.Checkpointer(
        store,
        progress=lambda key, records=False: (key.name, engine.Progress(T, (T,))),
        shard_of=lambda key: int(key.name[1:]),
        owns_shard=lambda shard: True,
    )
    writer.start()
    for key in keys:
        writer.track(key)
        writer.changed(key)
    await writer.stop()
    assert store.written == []
    for shard in range(3):
        await writer.hand_over(shard)
    assert [checkpoints.decode(content) for content in store.written] == [
        {f"s{shard}": engine.Progress(T, (T,))} for shard in range(3)
    ]


async def test_a_stop_renders_each_final_checkpoint_once_and_writes_it_as_rendered() -> None:
    """At a stop, the final checkpoints are rendered once, to find the run records they have no room for,
    and written as rendered when the shards are released: rendering a shard's records again would hold
    its release back for as long again, with the engine stopped and nothing to change them."""
    record = {"runId": "r", "scheduledTime": "2026-11-30T12:00:00.250Z", "outcome": "Succeeded", "attempts": 1}
    rendered: list[ScheduleKey] = []

    def progress(key: ScheduleKey, *, records: bool = False) -> tuple[str, engine.Progress]:
        if records:
            rendered.append(key)
        return key.name, engine.Progress(T, (), (record,) if records else ())

    keys = [ScheduleKey("ns", f"s{i}") for i in range(4)]
    store = Recording()
    writer = checkpoints.Checkpointer(
        store, progress=progress, shard_of=lambda key: int(key.name[1:]) % 2, owns_shard=lambda shard: True
    )
    for key in keys:
        writer.track(key)
    assert writer.render_finals(lambda shard: shard == 0) == []
    for shard in (0, 1):  # shard 1 was not rendered at the stop (say, released by a rebalance): rendered now
        await writer.hand_over(shard)
    assert sorted(rendered) == sorted(keys)
    assert [sorted(checkpoints.decode(content)) for content in store.written] == [["s0", "s2"], ["s1", "s3"]]
    assert all(p.records == (record,) for content in store.written for p in checkpoints.decode(content).values())


class Shard:
    """A shard's Schedules and their progress as an engine holds it, counting what the checkpoint asks."""

    def __init__(self, count: int) -> None:
        self.keys = [ScheduleKey("ns", f"s{i:05d}") for i in range(count)]
        self.uids = {key: str(uuid.uuid4()) for key in self.keys}
        self.progress = {key: engine.Progress(T) for key in self.keys}
        self.asked = 0

    def __call__(self, key: ScheduleKey, *, records: bool = False) -> tuple[str, engine.Progress] | None:
        self.asked += 1
        return (self.uids[key], self.progress[key]) if key in self.progress else None

    def expected(self) -> dict[str, engine.Progress]:
        return checkpoints.decode(checkpoints.encode({self.uids[k]: p for k, p in self.progress.items()}))


async def taken_over(shard: Shard, store: Recording) -> checkpoints.Checkpointer:
    """A Checkpointer that took the shard over and wrote its first checkpoint."""
    writer = checkpoints.Checkpointer(store, progress=shard, shard_of=lambda key: 0, owns_shard=lambda shard: True)
    for key in shard.keys:
        writer.track(key)
    await writer.load(0)
    writer.adopted(0)
    await writer.flush()
    return writer


async def test_a_write_renders_only_the_changed_schedules_and_holds_every_schedules_progress() -> None:
    """At 12,000 Schedules a shard, a write every second that rendered every entry held the event loop for a
    tenth of a second each time, and the runs due then were late by as much. A write renders the changed
    entries and ``REVISIT`` more, and its checkpoint is the same as one rendered whole."""
    shard, store = Shard(12_000), Recording()
    writer = await taken_over(shard, store)
    assert checkpoints.decode(store.written[-1]) == shard.expected()
    for step in range(1, 6):
        later = T + datetime.timedelta(seconds=step)
        changed = shard.keys[step * 100 : step * 100 + 30]
        for key in changed:
            shard.progress[key] = engine.Progress(later, (later,))
            writer.changed(key)
        gone = shard.keys[-step]
        del shard.progress[gone]
        writer.forget(gone)
        shard.asked = 0
        await writer.flush()
        assert shard.asked <= len(changed) + checkpoints.REVISIT
        assert checkpoints.decode(store.written[-1]) == shard.expected()


async def test_a_change_the_engine_did_not_report_is_in_the_checkpoint_within_a_round_of_revisits() -> None:
    shard, store = Shard(2_000), Recording()
    writer = await taken_over(shard, store)
    unreported = shard.keys[1_234]
    shard.progress[unreported] = engine.Progress(T + datetime.timedelta(seconds=9))
    writes = -(-len(shard.keys) // checkpoints.REVISIT)
    for _ in range(writes):
        writer.changed(shard.keys[0])
        await writer.flush()
    assert checkpoints.decode(store.written[-1]) == shard.expected()
