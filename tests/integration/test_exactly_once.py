"""Exactly once at the engine, judged by deliveries at a real handler whose reply cache is off.

With no reply cache, every second delivery of a run would execute again, so
these tests see what the operator sends, not what the handler's dedup hides:
the times a catch-up owes and the times due meanwhile, the fencing checked
before every send, and every way a run ends recorded in status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import itertools
import pathlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from schedulezero_handler import client as client_
from schedulezero_operator import engine as engine_
from schedulezero_operator import runs
from schedulezero_operator import status as status_
from schedulezero_operator.sinks import ScheduleKey
from tests.support import deliveries, processes
from tests.support.engines import MemorySink, Ownership, eventually, now

PROBE = "tests.support.handlers:ProbeHandler"
NAMESPACE = "once"
IDENTITY = "replica-under-test"
_names = itertools.count()


@dataclasses.dataclass
class Journalled:
    process: processes.HandlerProcess
    journal: pathlib.Path

    def runs(self, key: ScheduleKey) -> dict[tuple[str, str], list[deliveries.Delivery]]:
        return deliveries.by_run(deliveries.read(self.journal), prefix=f"{key}")

    def nominals(self, key: ScheduleKey) -> list[datetime.datetime]:
        return sorted(datetime.datetime.fromisoformat(nominal) for _, nominal in self.runs(key))


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journalled]:
    directory = tmp_path_factory.mktemp("once")
    journal = directory / "journal.jsonl"
    args = ("--reply-cache-size", "0", "--journal", str(journal))
    with processes.running_handler(PROBE, directory, *args) as process:
        yield Journalled(process, journal)


@pytest.fixture
async def client() -> AsyncIterator[client_.Client]:
    async with client_.Client() as c:
        yield c


@dataclasses.dataclass
class Replica:
    engine: engine_.Engine
    sink: MemorySink
    ownership: Ownership


@pytest.fixture
async def replica(handler: Journalled, client: client_.Client) -> AsyncIterator[Replica]:
    ownership = Ownership(owned=True)
    sink = MemorySink()
    settings = engine_.EngineSettings(status_interval=0.2, identity=IDENTITY)
    engine = engine_.Engine(client=client, status_sink=sink, events=sink, settings=settings, owner=ownership)
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.process.endpoint))
    await engine.start()
    yield Replica(engine, sink, ownership)
    ownership.owned = True  # so that stop records what is left
    await engine.stop()


def new_key() -> ScheduleKey:
    return ScheduleKey(NAMESPACE, f"s{next(_names)}")


def uid(key: ScheduleKey) -> str:
    return f"uid-{key.name}"


def apply(
    engine: engine_.Engine, key: ScheduleKey, spec: dict[str, Any], *, created: datetime.datetime, **extra: Any
) -> None:
    full = {"handler": "probe", "successfulRunsHistoryLimit": 100, "failedRunsHistoryLimit": 100, **spec}
    assert engine.apply_schedule(key, uid=uid(key), spec=full, created=created, **extra) is None


def rendered(engine: engine_.Engine, key: ScheduleKey) -> dict[str, Any]:
    status = engine.render_status(key)
    assert status is not None
    return status


def grid_second() -> datetime.datetime:
    return now().replace(microsecond=0)


# -- a catch-up owes its times, and the times due meanwhile -----------------------------------------


@pytest.mark.parametrize("policy", ["Forbid", "Replace", "Allow"])
async def test_times_that_come_due_during_a_catch_up_run_after_it_each_once(
    replica: Replica, handler: Journalled, policy: str
) -> None:
    """catchUpPolicy All after 12 s away, with a method of 0.3 s: the catch-up takes about 4 s, and the
    times due meanwhile wait their turn (Forbid, Replace) or start at once (Allow); none is skipped."""
    key = new_key()
    created = grid_second() - datetime.timedelta(seconds=60)
    stopped = grid_second() - datetime.timedelta(seconds=12)
    spec = {
        "method": "tick",
        "params": {"seconds": 0.3},
        "schedule": "@every 1s",
        "catchUpPolicy": "All",
        "concurrencyPolicy": policy,
    }
    apply(replica.engine, key, spec, created=created, status_={"lastScheduleTime": stopped.isoformat()})
    until = grid_second() + datetime.timedelta(seconds=6)  # well inside the catch-up's span and after it
    expected = [stopped + datetime.timedelta(seconds=i) for i in range(1, int((until - stopped).total_seconds()) + 1)]

    def all_ran() -> bool:
        return set(expected) <= set(handler.nominals(key))

    await eventually(all_ran, timeout=60)
    history = rendered(replica.engine, key)["runs"]
    skipped = [r["scheduledTime"] for r in history if r["outcome"] in ("Skipped", "Cancelled", "Missed")]
    assert not skipped, skipped
    sent = handler.runs(key)
    assert not deliveries.double_fired(sent)
    count = {datetime.datetime.fromisoformat(nominal): len(sent[run]) for run in sent for _, nominal in [run]}
    assert all(count[t] == 1 for t in expected)
    replica.engine.remove_schedule(key)


# -- fencing before every send ---------------------------------------------------------------------


def uid_with_jitter(key: ScheduleKey, nominal: datetime.datetime, *, within: tuple[float, float]) -> str:
    """A Schedule uid whose run of ``nominal`` waits a jitter in ``within`` (jitterSeconds 10)."""
    for n in itertools.count():
        candidate = f"uid-{key.name}-{n}"
        delay = runs.jitter(runs.run_id(candidate, nominal), max_seconds=10, room=None)
        if within[0] <= delay <= within[1]:
            return candidate
    raise AssertionError("unreachable")


async def test_a_run_whose_shard_is_lost_during_its_jitter_is_not_sent(replica: Replica, handler: Journalled) -> None:
    key = new_key()
    at = grid_second() + datetime.timedelta(seconds=2)
    schedule_uid = uid_with_jitter(key, at, within=(2.0, 3.0))
    spec = {"handler": "probe", "method": "tick", "runAt": at.isoformat(), "jitterSeconds": 10}
    assert replica.engine.apply_schedule(key, uid=schedule_uid, spec=spec, created=now()) is None
    await eventually(lambda: rendered(replica.engine, key)["active"], timeout=10)  # due, waiting its jitter
    assert "startTime" not in rendered(replica.engine, key)["active"][0]
    replica.ownership.owned = False  # the shard moves while the run waits
    await eventually(lambda: replica.engine.metrics.fenced_sends._value.get() >= 1, timeout=10)
    assert handler.runs(key) == {}
    # Left to the new owner: not held here, but in flight in the checkpoint this replica writes as it hands the
    # shard over, which says the time was started (lastScheduleTime) and so must say it was not sent.
    progress = replica.engine.progress(key)
    assert progress is not None
    assert progress[1].last_scheduled == at
    assert progress[1].in_flight == (at,)
    replica.ownership.owned = True
    assert rendered(replica.engine, key)["active"] == []
    # Taken over again, from a checkpoint written before the run started: it goes out now, as a re-send.
    await replica.engine.take_over([key], {schedule_uid: engine_.Progress(at - datetime.timedelta(seconds=60))})
    await eventually(lambda: handler.runs(key), timeout=20)
    [(_, sent)] = handler.runs(key).items()
    assert [d.resent for d in sent] == [True]


async def test_a_retry_whose_shard_is_lost_during_its_backoff_is_not_sent(
    replica: Replica, handler: Journalled
) -> None:
    key = new_key()
    spec = {
        "method": "tick",
        "params": {"failures": 5},
        "schedule": "@every 1h",
        "retry": {"maxAttempts": 5, "backoffSeconds": 3, "maxBackoffSeconds": 3},
    }
    apply(replica.engine, key, spec, created=now())
    before = replica.engine.metrics.fenced_sends._value.get()
    assert replica.engine.run_now(key, "fenced-backoff")
    await eventually(lambda: handler.runs(key), timeout=10)  # the first attempt went out and failed
    replica.ownership.owned = False  # lost while backing off
    await eventually(lambda: replica.engine.metrics.fenced_sends._value.get() > before, timeout=15)
    replica.ownership.owned = True
    [(_, sent)] = handler.runs(key).items()
    assert [d.attempt for d in sent] == [1]


async def test_a_resend_after_a_takeover_lost_while_waiting_for_its_handler_is_not_sent(
    handler: Journalled, client: client_.Client
) -> None:
    """A new owner re-sends the run its predecessor left in flight; if it loses the shard while it waits
    (here for the Handler, which its watch has not delivered yet), the re-send never goes out."""
    ownership = Ownership(owned=False)
    sink = MemorySink()
    settings = engine_.EngineSettings(status_interval=0.2, identity=IDENTITY, startup_grace=30.0)
    engine = engine_.Engine(client=client, status_sink=sink, events=sink, settings=settings, owner=ownership)
    await engine.start()
    key = new_key()
    created = grid_second() - datetime.timedelta(seconds=120)
    in_flight = created + datetime.timedelta(hours=0, seconds=60)
    try:
        apply(engine, key, {"method": "tick", "schedule": "@every 60s", "catchUpPolicy": "Skip"}, created=created)
        ownership.owned = True
        await engine.take_over([key], {uid(key): engine_.Progress(in_flight, (in_flight,))})
        await eventually(lambda: rendered(engine, key)["active"], timeout=10)
        ownership.owned = False
        engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.process.endpoint))
        await eventually(lambda: engine.metrics.fenced_sends._value.get() >= 1, timeout=10)
        assert handler.runs(key) == {}
        ownership.owned = True
        # Owned again (a later takeover): the run still owed goes out, marked as the re-send it is.
        await engine.take_over([key], {uid(key): engine_.Progress(in_flight, (in_flight,))})
        await eventually(lambda: handler.runs(key), timeout=10)
    finally:
        await engine.stop()
    [(_, sent)] = handler.runs(key).items()
    assert [(d.sender, d.resent) for d in sent] == [(IDENTITY, True)]


async def standby(handler: Journalled, client: client_.Client, ownership: Ownership) -> engine_.Engine:
    """A started engine acting only while ``ownership`` says so: a replica about to take a shard over."""
    settings = engine_.EngineSettings(status_interval=0.2, identity=IDENTITY)
    engine = engine_.Engine(
        client=client, status_sink=MemorySink(), events=MemorySink(), settings=settings, owner=ownership
    )
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.process.endpoint))
    await engine.start()
    return engine


async def test_a_time_the_timer_handed_out_before_a_takeover_is_not_sent_again_after_its_catch_up(
    handler: Journalled, client: client_.Client
) -> None:
    """On a loaded replica the timer can hand a due time to the engine's firing queue while the shard is still
    being taken over; the takeover's catch-up then starts that time (as a re-send: the previous holder may have
    sent it), and the queued fire, looked at once the shard is owned, must not send it first-hand as well.
    Here the timer's hand-over is held by hand until the takeover is done, as a busy loop holds it."""
    ownership = Ownership(owned=False)
    engine = await standby(handler, client, ownership)
    timer = engine._scheduler
    hand_over = timer._on_due
    held: list[Any] = []
    timer._on_due = held.extend
    key = new_key()
    created = grid_second() - datetime.timedelta(seconds=30)
    last = grid_second() - datetime.timedelta(seconds=1)  # where the previous holder's status got to
    try:
        apply(engine, key, {"method": "tick", "schedule": "@every 1s"}, created=created,
              status_={"lastScheduleTime": last.isoformat()})  # fmt: skip
        await eventually(lambda: held, timeout=10)  # a time came due, and waits in the firing queue
        [due] = held
        nominal = due.job.next_run_time
        ownership.owned = True
        resend_until = now() + datetime.timedelta(seconds=1)  # the previous holder's fencing deadline
        await engine.take_over([key], {}, resend_until=resend_until)
        timer._on_due = hand_over
        hand_over(held)
        await eventually(lambda: nominal in handler.nominals(key), timeout=10)
        await asyncio.sleep(1.5)
    finally:
        await engine.stop()
    [sent] = [d for (_, at), d in handler.runs(key).items() if datetime.datetime.fromisoformat(at) == nominal]
    assert [(d.sender, d.resent) for d in sent] == [(IDENTITY, True)]
    assert not deliveries.double_fired(handler.runs(key))


async def test_a_run_the_status_shows_active_but_the_checkpoint_has_passed_is_not_sent_again(
    handler: Journalled, client: client_.Client
) -> None:
    """Statuses lag behind the API budget: the status a new owner reads can show a run active that ended long
    ago, its later writes still waiting. The previous owner's checkpoint, written since, has passed that time
    without listing it in flight, so the takeover does not send it again (a re-send after the reply cache has
    let the reply go would run it twice)."""
    ownership = Ownership(owned=False)
    engine = await standby(handler, client, ownership)
    key = new_key()
    created = grid_second() - datetime.timedelta(seconds=570)  # times every minute from then: the next in 30 s
    ended = created + datetime.timedelta(minutes=6)  # ran then, its record not yet in any status
    active = {"runId": str(runs.run_id(uid(key), ended)), "scheduledTime": ended.isoformat()}
    stale = {"lastScheduleTime": ended.isoformat(), "active": [active]}
    in_flight = created + datetime.timedelta(minutes=9)  # in flight at the previous owner's stop
    try:
        apply(engine, key, {"method": "tick", "schedule": "@every 60s", "catchUpPolicy": "All"}, created=created,
              status_=stale)  # fmt: skip
        ownership.owned = True
        await engine.take_over([key], {uid(key): engine_.Progress(in_flight, (in_flight,))})
        await eventually(lambda: handler.nominals(key), timeout=10)
        await asyncio.sleep(1.0)
    finally:
        await engine.stop()
    assert handler.nominals(key) == [in_flight]


# -- every way a run ends is in status ------------------------------------------------------------


async def test_a_run_replaced_while_it_waits_its_jitter_is_recorded_cancelled(
    replica: Replica, handler: Journalled
) -> None:
    key = new_key()
    at = grid_second() + datetime.timedelta(seconds=2)
    schedule_uid = uid_with_jitter(key, at, within=(4.0, 6.0))
    spec = {
        "handler": "probe",
        "method": "tick",
        "runAt": at.isoformat(),
        "jitterSeconds": 10,
        "concurrencyPolicy": "Replace",
    }
    assert replica.engine.apply_schedule(key, uid=schedule_uid, spec=spec, created=now()) is None
    await eventually(lambda: rendered(replica.engine, key)["active"], timeout=10)
    assert replica.engine.run_now(key, "replaces-the-waiting-run")
    status = await eventually(
        lambda: (s := rendered(replica.engine, key)) and not s["active"] and len(s["runs"]) == 2 and s, timeout=15
    )
    outcomes = {r["scheduledTime"]: (r["outcome"], r.get("error", {}).get("message")) for r in status["runs"]}
    assert outcomes[status_.rfc3339(at)] == (
        "Cancelled",
        "replaced by a newer run (concurrencyPolicy Replace)",
    )
    sent = itertools.chain.from_iterable(handler.runs(key).values())
    assert all(datetime.datetime.fromisoformat(str(d.scheduled)) != at for d in sent)


async def test_a_one_shot_that_ran_is_ready_and_completed(replica: Replica, handler: Journalled) -> None:
    key = new_key()
    at = grid_second() + datetime.timedelta(seconds=1)
    apply(replica.engine, key, {"method": "tick", "runAt": at.isoformat()}, created=now())
    status = await eventually(lambda: (s := rendered(replica.engine, key))["runs"] and not s["active"] and s)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Completed"] == ("True", "RunAtPassed")
    assert conditions["Ready"] == ("True", "Completed")


# -- backfill and annotations ---------------------------------------------------------------------


def backfill_request(start: datetime.datetime, end: datetime.datetime) -> str:
    return f'{{"from":"{start:%Y-%m-%dT%H:%M:%SZ}","to":"{end:%Y-%m-%dT%H:%M:%SZ}"}}'


async def test_a_backfill_reaching_into_the_future_is_refused_naming_it(replica: Replica) -> None:
    key = new_key()
    apply(replica.engine, key, {"method": "tick", "schedule": "@every 1m"}, created=now())
    request = backfill_request(now() - datetime.timedelta(minutes=5), now() + datetime.timedelta(hours=1))
    assert not replica.engine.backfill(key, request)
    progress = rendered(replica.engine, key)["backfill"]
    assert progress["state"] == "Refused"
    assert "is in the future" in progress["message"]
    assert rendered(replica.engine, key)["active"] == []


async def test_a_backfill_never_holds_back_the_schedules_own_runs(replica: Replica, handler: Journalled) -> None:
    """Under Forbid, a scheduled time due while a backfill's run is active goes next, before the rest of
    the backfill; none is skipped, and the backfill completes."""
    key = new_key()
    created = grid_second() - datetime.timedelta(minutes=10)
    spec = {"method": "tick", "params": {"seconds": 0.4}, "schedule": "@every 1s", "concurrencyPolicy": "Forbid"}
    apply(replica.engine, key, spec, created=created)
    past = created + datetime.timedelta(seconds=10)
    assert replica.engine.backfill(key, backfill_request(past, past + datetime.timedelta(seconds=14)))
    started = grid_second()
    status = await eventually(lambda: (s := rendered(replica.engine, key))["backfill"]["state"] == "Complete" and s)
    finished = grid_second()
    assert status["backfill"]["done"] == status["backfill"]["total"] == 15
    scheduled = [started + datetime.timedelta(seconds=i) for i in range(2, int((finished - started).total_seconds()))]
    await eventually(lambda: set(scheduled) <= set(handler.nominals(key)), timeout=10)
    history = rendered(replica.engine, key)["runs"]
    assert [r for r in history if r["outcome"] == "Skipped"] == []
    assert not deliveries.double_fired(handler.runs(key))
    replica.engine.remove_schedule(key)


async def test_removing_the_backfill_annotation_cancels_what_has_not_started(
    replica: Replica, handler: Journalled
) -> None:
    key = new_key()
    created = grid_second() - datetime.timedelta(minutes=10)
    apply(replica.engine, key, {"method": "tick", "params": {"seconds": 0.5}, "schedule": "* * * * *"}, created=created)
    until = created + datetime.timedelta(minutes=9)
    request = backfill_request(created, until)

    def backfilled() -> int:  # the Schedule's own time may come due meanwhile, at the next minute
        return sum(1 for nominal in handler.nominals(key) if nominal <= until)

    assert replica.engine.backfill(key, request)
    await eventually(backfilled, timeout=10)
    replica.engine.backfill(key, None)  # the annotation removed
    progress = rendered(replica.engine, key)["backfill"]
    assert progress["state"] == "Cancelled"
    done_at_cancel = backfilled()
    await eventually(lambda: not rendered(replica.engine, key)["active"], timeout=10)
    assert backfilled() == done_at_cancel < progress["total"]
    assert replica.engine.backfill(key, request)  # asked again after a cancel: it runs again


@pytest.mark.parametrize("value", ["not json", '{"from": 1}', "x" * 200_000])
async def test_a_backfill_annotation_is_refused_once_and_stays_refused(replica: Replica, value: str) -> None:
    key = new_key()
    apply(replica.engine, key, {"method": "tick", "schedule": "@every 1h"}, created=now())
    for _ in range(5):  # every watch event, including those of the operator's own status writes
        assert not replica.engine.backfill(key, value)
    assert replica.sink.reasons(key) == ["BackfillRefused"]
    progress = rendered(replica.engine, key)["backfill"]
    assert progress["state"] == "Refused"
    assert len(str(progress)) < 1024
    assert replica.engine.backfill(key, None) is False  # removing it after a refusal changes nothing


async def test_a_run_now_token_too_long_is_refused_once_and_not_kept(replica: Replica, handler: Journalled) -> None:
    key = new_key()
    apply(replica.engine, key, {"method": "tick", "schedule": "@every 1h"}, created=now())
    token = "t" * 200_000
    for _ in range(5):
        assert not replica.engine.run_now(key, token)
    assert replica.sink.reasons(key) == ["RunNowRefused"]
    assert len(rendered(replica.engine, key)["lastRunNowToken"]) < 100
    assert handler.runs(key) == {}


async def test_a_catch_up_on_a_slow_machine_loses_no_time_between_its_clock_readings(
    replica: Replica, handler: Journalled, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catch-up runs the times up to now and schedules the next one after now: if the machine stalls
    between two readings of the clock, a time falling between them must still run."""
    key = new_key()
    created = grid_second() - datetime.timedelta(seconds=60)
    stopped = grid_second() - datetime.timedelta(seconds=3)
    real = engine_.utcnow

    def stalling() -> datetime.datetime:  # every reading of the clock costs a second and a bit
        time.sleep(1.1)
        return real()

    monkeypatch.setattr(engine_, "utcnow", stalling)
    spec = {"method": "tick", "schedule": "@every 1s", "catchUpPolicy": "All"}
    apply(replica.engine, key, spec, created=created, status_={"lastScheduleTime": stopped.isoformat()})
    monkeypatch.setattr(engine_, "utcnow", real)
    until = grid_second() + datetime.timedelta(seconds=2)
    expected = [stopped + datetime.timedelta(seconds=i) for i in range(1, int((until - stopped).total_seconds()) + 1)]
    await eventually(lambda: set(expected) <= set(handler.nominals(key)), timeout=30)
    assert not deliveries.double_fired(handler.runs(key))
    replica.engine.remove_schedule(key)


async def test_a_run_that_ended_during_a_burst_does_not_hold_back_a_forbid_schedules_next_time(
    replica: Replica, handler: Journalled
) -> None:
    """While a burst of due times is being handed out, an ended run's record waits, so that the burst's calls go
    out first; the run must not count as still running meanwhile, or a Forbid Schedule whose next time is in
    that burst would skip it. Here the burst is held open by hand, as a loaded machine holds it open."""
    key = new_key()
    apply(
        replica.engine, key, {"method": "tick", "schedule": "@every 1h", "concurrencyPolicy": "Forbid"}, created=now()
    )
    replica.engine._drained.clear()  # a burst is being handed out
    try:
        assert replica.engine.run_now(key, "first")
        await eventually(lambda: handler.runs(key), timeout=10)
        await asyncio.sleep(0.5)  # its reply is in: the run has ended, its record waits for the burst
        assert replica.engine.run_now(key, "second")  # due in the burst
        await eventually(lambda: len(handler.runs(key)) == 2, timeout=10)
    finally:
        replica.engine._drained.set()
    await eventually(lambda: len(rendered(replica.engine, key)["runs"]) == 2)
    assert [r["outcome"] for r in rendered(replica.engine, key)["runs"]] == ["Succeeded", "Succeeded"]
