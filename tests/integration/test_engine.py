"""The scheduling engine carrying runs through, against a real handler process."""

from __future__ import annotations

import asyncio
import datetime
import gc
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import zmq
import zmq.asyncio

from schedulezero_handler import client as client_
from schedulezero_handler import protocol
from schedulezero_operator import engine as engine_
from schedulezero_operator import runs
from schedulezero_operator import status as status_
from schedulezero_operator.sinks import ScheduleKey
from tests.support import controlplane, processes
from tests.support.engines import MemorySink, Ownership, eventually, now

PROBE = "tests.support.handlers:ProbeHandler"
NAMESPACE = "t"
_names = itertools.count()
_created: dict[ScheduleKey, datetime.datetime] = {}


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path_factory.mktemp("engine")) as process:
        yield process


@pytest.fixture
async def client() -> AsyncIterator[client_.Client]:
    async with client_.Client() as c:
        yield c


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
async def engine(
    handler: processes.HandlerProcess, client: client_.Client, sink: MemorySink
) -> AsyncIterator[engine_.Engine]:
    engine = engine_.Engine(
        client=client, status_sink=sink, events=sink, settings=engine_.EngineSettings(status_interval=0.2)
    )
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.endpoint))
    await engine.start()
    yield engine
    await engine.stop()


def apply(engine: engine_.Engine, spec: dict[str, Any], *, key: ScheduleKey | None = None, **extra: Any) -> ScheduleKey:
    key = key or ScheduleKey(NAMESPACE, f"s{next(_names)}")
    full = {"handler": "probe", "successfulRunsHistoryLimit": 50, "failedRunsHistoryLimit": 50, **spec}
    created = _created.setdefault(key, now())  # like metadata.creationTimestamp: fixed for the object's life
    assert engine.apply_schedule(key, uid=f"uid-{key.name}", spec=full, created=created, **extra) is None
    return key


def records(engine: engine_.Engine, key: ScheduleKey) -> list[dict[str, Any]]:
    status = engine.render_status(key)
    assert status is not None
    return list(status["runs"])


async def ticks(client: client_.Client, handler: processes.HandlerProcess, key: ScheduleKey) -> list[dict[str, Any]]:
    seen = await client.call(handler.endpoint, "ticks_seen")
    return [t for t in seen if t["schedule"] == str(key)]


def soon(seconds: float = 1.0) -> str:
    return (now() + datetime.timedelta(seconds=seconds)).isoformat()


async def fenced_engine(
    handler: processes.HandlerProcess, client: client_.Client, ownership: Ownership
) -> tuple[engine_.Engine, MemorySink]:
    """A started engine that acts only while ``ownership`` says so, as a replica of the operator does."""
    sink = MemorySink()
    settings = engine_.EngineSettings(status_interval=0.2)
    engine = engine_.Engine(client=client, status_sink=sink, events=sink, settings=settings, owner=ownership)
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.endpoint))
    await engine.start()
    return engine, sink


async def test_retries_until_success_and_records_the_attempts(engine: engine_.Engine) -> None:
    key = apply(
        engine,
        {
            "method": "flaky",
            "params": {"key": "retry-ok", "failures": 2},
            "runAt": soon(),
            "retry": {"maxAttempts": 3, "backoffSeconds": 0.1, "maxBackoffSeconds": 0.2},
        },
    )
    [run] = await eventually(lambda: records(engine, key))
    assert run["outcome"] == "Succeeded"
    assert run["attempts"] == 3
    assert run["result"] == "3"  # the handler saw attempt 3 succeed
    assert engine.render_status(key)["counters"]["succeeded"] == 1  # type: ignore[index]


async def test_a_non_retryable_error_is_not_retried(engine: engine_.Engine, sink: MemorySink) -> None:
    key = apply(
        engine, {"method": "add", "params": {"a": "not a number"}, "runAt": soon(), "retry": {"maxAttempts": 5}}
    )
    [run] = await eventually(lambda: records(engine, key))
    assert run["outcome"] == "Failed"
    assert run["attempts"] == 1
    assert run["error"]["type"] == "InvalidParams"
    assert "parameter 'a'" in run["error"]["message"]
    assert any(k == key and reason == "RunFailed" for k, reason, _ in sink.events)


async def test_a_run_past_its_timeout_is_timed_out(engine: engine_.Engine, client: client_.Client) -> None:
    key = apply(
        engine,
        {
            "method": "slow",
            "params": {"seconds": 5, "key": "timeout"},
            "runAt": soon(),
            "timeoutSeconds": 1,
            "retry": {"maxAttempts": 2, "backoffSeconds": 0, "maxBackoffSeconds": 0},
        },
    )
    [run] = await eventually(lambda: records(engine, key))
    assert run["outcome"] == "TimedOut"
    assert run["attempts"] == 2
    assert run["error"]["type"] == "DeadlineExceeded"
    assert 1.9 < run["durationSeconds"] < 4.5  # two 1-second attempts, not the method's 5 seconds


async def test_forbid_lets_a_run_wait_for_the_previous_one_and_skips_it_if_the_next_time_comes_first(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess
) -> None:
    """Runs of 2.5 s every second: never two at once; the time due while one runs waits and starts as it ends,
    and a time still waiting when the next one comes is Skipped without reaching the handler."""
    key = apply(engine, {"method": "tick", "params": {"seconds": 2.5}, "schedule": "@every 1s"})
    history = await eventually(
        lambda: (rs := records(engine, key)) and sum(r["outcome"] == "Succeeded" for r in rs) >= 2 and rs, timeout=15
    )
    engine.remove_schedule(key)
    succeeded = sorted((r for r in history if r["outcome"] == "Succeeded"), key=lambda r: r["startTime"])
    assert [r for r in history if r["outcome"] == "Skipped"]
    for earlier, later in itertools.pairwise(succeeded):
        assert _time(later["startTime"]) >= _time(earlier["finishTime"])  # never two at once
        waited = (_time(later["startTime"]) - _time(later["scheduledTime"])).total_seconds()
        assert waited > 0.3  # it waited for the previous run rather than being skipped
    skipped = {r["scheduledTime"] for r in history if r["outcome"] == "Skipped"}
    reached = {status_.rfc3339(_time(t["scheduled"])) for t in await ticks(client, handler, key)}
    assert not skipped & reached  # skipped runs never reached the handler


async def test_allow_overlaps_runs(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess
) -> None:
    key = apply(
        engine, {"method": "tick", "params": {"seconds": 2.5}, "schedule": "@every 1s", "concurrencyPolicy": "Allow"}
    )
    await eventually(lambda: len(engine.render_status(key)["active"]) >= 2, timeout=10)  # type: ignore[index]
    assert len(await ticks(client, handler, key)) >= 2
    assert not any(r["outcome"] == "Skipped" for r in records(engine, key))


async def test_replace_cancels_the_running_call(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess
) -> None:
    key = apply(
        engine,
        {
            "method": "slow",
            "params": {"seconds": 2.5, "key": "replace"},
            "schedule": "@every 1s",
            "concurrencyPolicy": "Replace",
        },
    )
    await eventually(lambda: any(r["outcome"] == "Cancelled" for r in records(engine, key)), timeout=10)
    engine.remove_schedule(key)
    await asyncio.sleep(0.5)
    counts = await client.call(handler.endpoint, "counts")
    assert counts["slow-start:replace"] >= 2
    assert counts.get("slow-done:replace", 0) == 0  # each run was cancelled at the handler by the next


async def test_run_now_runs_once_per_token(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess
) -> None:
    key = apply(engine, {"method": "tick", "schedule": "0 0 1 1 *"})
    assert engine.run_now(key, "token-1")
    assert not engine.run_now(key, "token-1")
    [run] = await eventually(lambda: records(engine, key))
    assert run["runId"] == str(runs.manual_run_id(f"uid-{key.name}", "token-1"))
    assert engine.render_status(key)["lastRunNowToken"] == "token-1"  # type: ignore[index]
    assert [t["run"] for t in await ticks(client, handler, key)] == [
        runs.manual_run_id(f"uid-{key.name}", "token-1").hex
    ]


@pytest.mark.parametrize(
    ("policy", "deadline"),
    [("Latest", None), ("All", None), ("Skip", None), ("All", 1.5)],
    ids=["latest", "all", "skip", "all-with-deadline"],
)
async def test_a_restart_applies_the_catch_up_policy(
    engine: engine_.Engine,
    client: client_.Client,
    handler: processes.HandlerProcess,
    policy: str,
    deadline: float | None,
) -> None:
    key = ScheduleKey(NAMESPACE, f"s{next(_names)}")
    created = (now() - datetime.timedelta(seconds=30)).replace(microsecond=0)
    _created[key] = created
    stopped_at = created + datetime.timedelta(seconds=25)  # the operator's last run before it went away
    spec: dict[str, Any] = {"method": "tick", "schedule": "@every 1s", "catchUpPolicy": policy}
    if deadline is not None:
        spec["startingDeadlineSeconds"] = deadline
    apply(engine, spec, key=key, status_={"lastScheduleTime": stopped_at.isoformat(), "runs": []})
    restarted_at = now()
    await asyncio.sleep(1.5)
    history = records(engine, key)
    engine.remove_schedule(key)

    def while_away(times: list[str]) -> list[datetime.datetime]:
        return sorted(moment for moment in map(_time, times) if stopped_at < moment < restarted_at)

    ran = while_away([t["scheduled"] for t in await ticks(client, handler, key)])
    missed = while_away([r["scheduledTime"] for r in history if r["outcome"] == "Missed"])
    assert len(ran) + len(missed) >= 4  # about five nominal times passed while it was away
    assert set(ran).isdisjoint(missed)
    if policy == "Skip":
        assert ran == []
    elif policy == "Latest":
        assert len(ran) == 1
        assert ran[0] > max(missed)  # the most recent one ran
    elif deadline is None:
        assert missed == []
    else:
        assert ran
        assert missed
        assert all((restarted_at - moment).total_seconds() <= deadline + 0.5 for moment in ran)
        assert max(missed) < min(ran)


@pytest.mark.parametrize("policy", ["Forbid", "Replace"])
async def test_times_due_during_a_catch_up_wait_their_turn(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess, policy: str
) -> None:
    """catchUpPolicy All after 8 s away, each run taking 0.3 s: the times that come due while the catch-up runs
    are neither skipped (Forbid) nor replace a run of it (Replace): each time runs once, in order."""
    key = ScheduleKey(NAMESPACE, f"s{next(_names)}")
    _created[key] = (now() - datetime.timedelta(seconds=60)).replace(microsecond=0)
    stopped = now().replace(microsecond=0) - datetime.timedelta(seconds=8)
    spec = {"method": "tick", "params": {"seconds": 0.3}, "schedule": "@every 1s", "catchUpPolicy": "All",
            "concurrencyPolicy": policy}  # fmt: skip
    apply(engine, spec, key=key, status_={"lastScheduleTime": stopped.isoformat(), "runs": []})
    until = now().replace(microsecond=0) + datetime.timedelta(seconds=4)  # beyond the catch-up's end
    expected = [stopped + datetime.timedelta(seconds=i) for i in range(1, int((until - stopped).total_seconds()))]

    async def seen() -> list[datetime.datetime]:
        return sorted(_time(t["scheduled"]) for t in await ticks(client, handler, key))

    async with asyncio.timeout(30):
        while not set(expected) <= set(await seen()):  # noqa: ASYNC110  (the handler's state, in its process)
            await asyncio.sleep(0.2)
    history = records(engine, key)
    engine.remove_schedule(key)
    ran = [t for t in await seen() if t in expected]
    assert ran == expected  # each once, in their order
    assert not [r for r in history if r["outcome"] in ("Skipped", "Cancelled")]


def conditions(engine: engine_.Engine, key: ScheduleKey) -> dict[str, tuple[str, str]]:
    status = engine.render_status(key)
    assert status is not None
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize("policy", ["All", "Latest"])
async def test_times_during_a_suspension_are_not_runs_neither_run_nor_missed_nor_warned_of(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess, sink: MemorySink, policy: str
) -> None:
    spec: dict[str, Any] = {"method": "tick", "schedule": "@every 1s", "catchUpPolicy": policy}
    key = apply(engine, spec)
    await eventually(lambda: records(engine, key))
    key = apply(engine, {**spec, "suspend": True}, key=key)
    assert conditions(engine, key) == {
        "Ready": ("True", "Scheduled"),  # it can run as specified; suspending is not a fault
        "Suspended": ("True", "Suspended"),
        "Completed": ("False", "TimesRemain"),
    }
    suspended_at = now()
    await asyncio.sleep(3.2)
    resumed_at = now()
    apply(engine, spec, key=key)
    assert conditions(engine, key)["Suspended"] == ("False", "NotSuspended")
    await asyncio.sleep(1.5)
    history = records(engine, key)
    engine.remove_schedule(key)
    during = [t for t in await ticks(client, handler, key) if suspended_at < _time(t["scheduled"]) < resumed_at]
    assert during == []
    assert [r for r in history if r["outcome"] == "Missed"] == []
    assert not [reason for k, reason, _ in sink.events if k == key and reason == "MissedSchedule"]
    assert any(_time(t["scheduled"]) > resumed_at for t in await ticks(client, handler, key))  # and it goes on


def _time(rfc3339: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(rfc3339)


async def test_spec_change_reschedules_and_keeps_history(engine: engine_.Engine) -> None:
    key = apply(engine, {"method": "tick", "schedule": "@every 1s"})
    await eventually(lambda: records(engine, key))
    key = apply(engine, {"method": "tick", "schedule": "0 0 1 1 *"}, key=key, generation=2)
    status = engine.render_status(key)
    assert status is not None
    assert status["runs"]  # kept
    assert status["nextRunTime"].startswith(f"{now().year + 1}-01-01T00:00:00")
    assert status["observedGeneration"] == 2


async def test_removal_stops_future_runs(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess
) -> None:
    key = apply(engine, {"method": "tick", "schedule": "@every 1s"})
    await eventually(lambda: records(engine, key))
    engine.remove_schedule(key)
    seen = len(await ticks(client, handler, key))
    await asyncio.sleep(2.5)
    assert len(await ticks(client, handler, key)) == seen
    assert engine.render_status(key) is None


async def test_missing_handler_and_method_show_in_ready_and_recover(engine: engine_.Engine) -> None:
    key = apply(engine, {"method": "tick", "schedule": "@every 1s", "handler": "nowhere"})
    status = engine.render_status(key)
    assert status is not None
    assert status["conditions"][0]["reason"] == "HandlerNotFound"
    [run] = await eventually(lambda: records(engine, key))
    assert run["outcome"] == "Failed"
    assert run["error"]["type"] == "HandlerNotFound"
    engine.set_handler(NAMESPACE, "nowhere", engine_.HandlerInfo("tcp://127.0.0.1:9", frozenset({"other"})))
    assert engine.render_status(key)["conditions"][0]["reason"] == "MethodNotFound"  # type: ignore[index]
    engine.set_handler(NAMESPACE, "nowhere", engine_.HandlerInfo("tcp://127.0.0.1:9", frozenset({"tick"})))
    assert engine.render_status(key)["conditions"][0]["reason"] == "Scheduled"  # type: ignore[index]


async def test_invalid_schedule_is_reported_and_others_keep_running(engine: engine_.Engine, sink: MemorySink) -> None:
    bad = ScheduleKey(NAMESPACE, "bad-cron")
    problem = engine.apply_schedule(
        bad, uid="bad", spec={"handler": "probe", "method": "tick", "schedule": "61 * * * *"}, created=now()
    )
    assert problem is not None
    assert "minute field '61'" in problem
    zone = ScheduleKey(NAMESPACE, "bad-zone")
    problem = engine.apply_schedule(
        zone,
        uid="zone",
        spec={"handler": "probe", "method": "tick", "schedule": "@daily", "timeZone": "Mars/Olympus"},
        created=now(),
    )
    assert problem is not None
    assert "Mars/Olympus" in problem
    good = apply(engine, {"method": "tick", "schedule": "@every 1s"})
    await eventually(lambda: len(records(engine, good)) >= 2)
    assert engine.render_status(bad)["conditions"][0]["reason"] == "InvalidSchedule"  # type: ignore[index]
    assert {(k, r) for k, r, _ in sink.events} >= {(bad, "InvalidSchedule"), (zone, "InvalidSchedule")}


async def test_status_writes_are_coalesced(handler: processes.HandlerProcess, client: client_.Client) -> None:
    sink = MemorySink()
    engine = engine_.Engine(client=client, status_sink=sink, settings=engine_.EngineSettings(status_interval=2.0))
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.endpoint))
    await engine.start()
    try:
        keys = [apply(engine, {"method": "tick", "schedule": "@every 1s"}) for _ in range(5)]
        await asyncio.sleep(4.5)
        ran = sum(len(records(engine, key)) for key in keys)
    finally:
        await engine.stop()
    assert ran >= 15  # each of the 5 ran about 4 times, every run with a start and an end
    assert sink.writes <= len(keys) * 4  # at most one write per Schedule per 2 s (plus the final flush)


def test_run_ids_are_stable_per_schedule_and_time() -> None:
    moment = datetime.datetime(2026, 11, 28, 6, 0, tzinfo=datetime.UTC)
    assert runs.run_id("uid-1", moment) == runs.run_id("uid-1", moment)
    assert runs.run_id("uid-1", moment) != runs.run_id("uid-2", moment)
    assert runs.run_id("uid-1", moment) != runs.run_id("uid-1", moment + datetime.timedelta(seconds=1))


async def test_a_run_in_flight_at_a_crash_runs_again_after_restart(
    engine: engine_.Engine, client: client_.Client, handler: processes.HandlerProcess
) -> None:
    key = ScheduleKey(NAMESPACE, f"s{next(_names)}")
    created = (now() - datetime.timedelta(seconds=30)).replace(microsecond=0)  # like a creationTimestamp
    _created[key] = created
    crashed_at = created + datetime.timedelta(seconds=20)  # on the @every 1s grid
    previous_status = {  # what the crashed operator last wrote: the run of crashed_at in flight
        "lastScheduleTime": crashed_at.isoformat(),
        "active": [{"runId": str(runs.run_id(f"uid-{key.name}", crashed_at)), "scheduledTime": crashed_at.isoformat()}],
        "runs": [],
    }
    apply(
        engine, {"method": "tick", "schedule": "@every 1s", "catchUpPolicy": "Skip"}, key=key, status_=previous_status
    )
    restarted = now()
    await eventually(lambda: any(r["outcome"] == "Succeeded" for r in records(engine, key)))
    engine.remove_schedule(key)
    seen = [datetime.datetime.fromisoformat(t["scheduled"]) for t in await ticks(client, handler, key)]
    assert crashed_at in seen  # it was started, so it runs again, whatever the catch-up policy
    assert [t for t in seen if crashed_at < t < restarted] == []  # the times nobody started: Skip


def invalid(engine: engine_.Engine, spec: dict[str, Any]) -> str:
    key = ScheduleKey(NAMESPACE, f"s{next(_names)}")
    problem = engine.apply_schedule(key, uid=key.name, spec={"handler": "probe", **spec}, created=now())
    assert problem is not None
    return problem


async def test_params_no_run_could_send_make_the_schedule_invalid(engine: engine_.Engine) -> None:
    """Such params once failed inside every run and left it active for good, with Ready still True."""
    every = {"method": "echo", "schedule": "@every 1s"}
    date = invalid(engine, {**every, "params": {"value": datetime.date(2026, 1, 1)}})
    assert date == "spec.params.value is a date, which JSON cannot represent"
    assert invalid(engine, {**every, "params": {"n": 2**64}}) == (
        "spec.params.n is an integer beyond 64 bits, which the wire cannot carry"
    )
    large = invalid(engine, {**every, "params": {"value": "x" * 70_000}})
    assert large == "spec.params is 70012 bytes of JSON, more than the 65536 allowed"
    good = apply(engine, {"method": "tick", "schedule": "@every 1s"})
    await eventually(lambda: any(r["outcome"] == "Succeeded" for r in records(engine, good)))


async def test_a_malformed_endpoint_fails_the_run_with_a_record(engine: engine_.Engine, sink: MemorySink) -> None:
    engine.set_handler(NAMESPACE, "malformed", engine_.HandlerInfo("tcp://127.0.0.1"))
    key = apply(engine, {"handler": "malformed", "method": "tick", "runAt": soon(0.2), "retry": {"maxAttempts": 1}})
    [record] = await eventually(lambda: records(engine, key))
    assert record["outcome"] == "Failed"
    assert record["error"]["type"] == "Unavailable"
    assert record["error"]["message"].startswith("cannot connect to 'tcp://127.0.0.1': ")
    assert engine.render_status(key)["active"] == []  # type: ignore[index]
    assert (key, "RunFailed") in {(k, r) for k, r, _ in sink.events}


async def test_a_reply_json_cannot_carry_fails_its_run_once(engine: engine_.Engine) -> None:
    """A handler in another language may answer msgpack that JSON, and so status, cannot hold."""
    context = zmq.asyncio.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    async def answer_with_bytes() -> None:
        while True:
            identity, *frames = await router.recv_multipart()
            _, call_id, _, _ = protocol.split(frames)
            await router.send_multipart([identity, b"SZ1", b"RESULT", call_id, protocol.pack({}), protocol.pack(b"\0")])

    server = asyncio.ensure_future(answer_with_bytes())
    try:
        engine.set_handler(NAMESPACE, "foreign", engine_.HandlerInfo(f"tcp://127.0.0.1:{port}"))
        key = apply(engine, {"handler": "foreign", "method": "m", "runAt": soon(0.2)})
        [record] = await eventually(lambda: records(engine, key))
    finally:
        server.cancel()
        router.close(linger=0)
        context.term()
    assert (record["outcome"], record["attempts"], record["error"]["type"]) == ("Failed", 1, "InvalidResult")
    assert record["error"]["message"] == f"from tcp://127.0.0.1:{port}: result is a bytes, which JSON cannot represent"
    assert engine.render_status(key)["active"] == []  # type: ignore[index]


async def test_stop_interrupts_runs_in_flight_and_a_restart_runs_them_again(
    handler: processes.HandlerProcess, client: client_.Client
) -> None:
    """Stopped during a retry, the engine once crashed on its closed client and left a stale active run."""
    sink = MemorySink()
    settings = engine_.EngineSettings(status_interval=0.2, stop_grace=0.5)
    nowhere = f"tcp://127.0.0.1:{controlplane.free_port()}"
    first_client = client_.Client()
    first = engine_.Engine(client=first_client, status_sink=sink, events=sink, settings=settings)
    first.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(nowhere))
    await first.start()
    retry = {"maxAttempts": 20, "backoffSeconds": 0.5, "maxBackoffSeconds": 0.5}
    key = apply(first, {"method": "tick", "runAt": soon(0.2), "timeoutSeconds": 1, "retry": retry})
    await eventually(lambda: any(run.get("attempt", 0) >= 2 for run in first.render_status(key)["active"]))  # type: ignore[index]
    async with asyncio.timeout(5):
        await first.stop()
        await first_client.close()
    stopped = sink.statuses[key]
    [active] = stopped["active"]
    assert active["interrupted"].startswith("the engine stopped before the run finished")
    assert stopped["runs"] == []  # not recorded as Cancelled ("replaced"), nor as failed

    second = engine_.Engine(client=client, status_sink=sink, events=sink, settings=settings)
    second.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.endpoint))
    await second.start()
    try:
        spec = {"handler": "probe", "method": "tick", "runAt": stopped["active"][0]["scheduledTime"], "retry": retry}
        second.apply_schedule(key, uid=f"uid-{key.name}", spec=spec, created=_created[key], status_=stopped)
        [record] = await eventually(lambda: records(second, key))
    finally:
        await second.stop()
    assert (record["runId"], record["outcome"]) == (active["runId"], "Succeeded")
    assert [t["run"] for t in await ticks(client, handler, key)] == [uuid.UUID(active["runId"]).hex]


async def test_a_standby_fires_nothing_until_it_takes_over_from_the_checkpoint(
    handler: processes.HandlerProcess, client: client_.Client
) -> None:
    """A replica that does not own a Schedule keeps it warm but silent; taking it over starts from the
    newer of status and checkpoint, and re-sends the run the previous owner had in flight."""
    ownership = Ownership()
    standby, sink = await fenced_engine(handler, client, ownership)
    key = ScheduleKey(NAMESPACE, f"s{next(_names)}")
    created = (now() - datetime.timedelta(seconds=20)).replace(microsecond=0)
    _created[key] = created
    stale = {"lastScheduleTime": (created + datetime.timedelta(seconds=5)).isoformat(), "runs": []}
    try:
        apply(standby, {"method": "tick", "schedule": "@every 1s", "catchUpPolicy": "All"}, key=key, status_=stale)
        await asyncio.sleep(1.5)
        assert await ticks(client, handler, key) == []
        assert key not in sink.statuses  # its owner writes its status, not a standby
        checkpointed = created + datetime.timedelta(seconds=15)
        ownership.owned = True
        await standby.take_over([key], {f"uid-{key.name}": engine_.Progress(checkpointed, (checkpointed,))})
        await eventually(lambda: len(records(standby, key)) >= 8)
    finally:
        await standby.stop()
    seen = sorted(datetime.datetime.fromisoformat(t["scheduled"]) for t in await ticks(client, handler, key))
    assert seen[0] == checkpointed  # in flight at the previous owner: sent again under its run id
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(seen)] == [1.0] * (len(seen) - 1)


async def test_a_standby_takes_over_from_the_newest_status_its_owner_wrote(
    handler: processes.HandlerProcess, client: client_.Client
) -> None:
    """A standby sees every status its owner writes (the spec unchanged) and keeps only the newest, read
    when it takes the Schedule over: its catch-up starts there, and the counters carry on from it."""
    ownership = Ownership()
    standby, _ = await fenced_engine(handler, client, ownership)
    key = ScheduleKey(NAMESPACE, f"s{next(_names)}")
    created = (now() - datetime.timedelta(seconds=30)).replace(microsecond=0)
    _created[key] = created
    spec = {"method": "tick", "schedule": "@every 1s", "catchUpPolicy": "All"}
    try:
        for seconds, succeeded in ((5, 5), (12, 12), (20, 20)):  # as the owner's status writes arrive
            written = {
                "lastScheduleTime": (created + datetime.timedelta(seconds=seconds)).isoformat(),
                "counters": {"succeeded": succeeded},
            }
            apply(standby, spec, key=key, status_=written)
        ownership.owned = True
        await standby.take_over([key], {})
        await eventually(lambda: len(records(standby, key)) >= 3)
        counters = standby.render_status(key)["counters"]  # type: ignore[index]
    finally:
        await standby.stop()
    seen = sorted(datetime.datetime.fromisoformat(t["scheduled"]) for t in await ticks(client, handler, key))
    assert seen[0] == created + datetime.timedelta(seconds=21)
    assert counters["succeeded"] >= 20 + 3


async def test_times_skipped_while_not_owned_are_caught_up_even_before_a_first_run(
    handler: processes.HandlerProcess, client: client_.Client
) -> None:
    """A Schedule that never ran has no lastScheduleTime to catch up from: the engine remembers the first
    time it let pass while it did not own the Schedule (fenced, or its shard still being taken over)."""
    ownership = Ownership()
    engine, _ = await fenced_engine(handler, client, ownership)
    try:
        key = apply(engine, {"method": "tick", "schedule": "@every 1s", "catchUpPolicy": "All"})
        await asyncio.sleep(2.6)
        assert await ticks(client, handler, key) == []
        ownership.owned = True
        await engine.take_over([key], {})
        await eventually(lambda: len(records(engine, key)) >= 4)
    finally:
        await engine.stop()
    seen = sorted(datetime.datetime.fromisoformat(t["scheduled"]) for t in await ticks(client, handler, key))
    assert (seen[0] - _created[key]).total_seconds() <= 1.0  # the first time due after creation ran
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(seen)] == [1.0] * (len(seen) - 1)


def next_run_gauge(engine: engine_.Engine, key: ScheduleKey) -> float | None:
    labels = {"namespace": key.namespace, "schedule": key.name}
    return engine.metrics.registry.get_sample_value("schedulezero_schedule_next_run_timestamp_seconds", labels)


async def test_every_replica_shows_each_schedules_next_run_and_none_once_no_time_is_left(
    handler: processes.HandlerProcess, client: client_.Client
) -> None:
    """The next-run gauge is what the missed-runs alert and the dashboard read, from any replica: a standby's
    must move on with the timer it keeps, and a Schedule that has fired its last time has no next run."""
    ownership = Ownership()
    standby, _ = await fenced_engine(handler, client, ownership)
    try:
        every = apply(standby, {"method": "tick", "schedule": "@every 1s"})
        once = apply(standby, {"method": "tick", "runAt": soon(0.5)})
        first = next_run_gauge(standby, every)
        assert first is not None
        assert next_run_gauge(standby, once) is not None
        await asyncio.sleep(2.6)
        later = next_run_gauge(standby, every)
        assert later is not None
        assert later >= first + 2
        assert later > time.time()
        assert next_run_gauge(standby, once) is None
    finally:
        await standby.stop()


async def test_a_checkpoint_older_than_the_first_time_let_pass_is_where_a_takeover_resumes(
    handler: processes.HandlerProcess, client: client_.Client
) -> None:
    """A replica started while another owned the Schedule has not seen its status yet (statuses lag behind
    the API budget): the checkpoint, not the first time it let pass, says where the previous owner stopped."""
    ownership = Ownership()
    engine, _ = await fenced_engine(handler, client, ownership)
    key = ScheduleKey(NAMESPACE, f"s{next(_names)}")
    _created[key] = (now() - datetime.timedelta(seconds=20)).replace(microsecond=0)
    try:
        apply(engine, {"method": "tick", "schedule": "@every 1s", "catchUpPolicy": "All"}, key=key)
        await asyncio.sleep(2.6)  # times let pass, unowned
        last_run = now().replace(microsecond=0) - datetime.timedelta(seconds=5)  # where the previous owner was
        ownership.owned = True
        await engine.take_over([key], {f"uid-{key.name}": engine_.Progress(last_run)})
        await eventually(lambda: len(records(engine, key)) >= 8)
    finally:
        await engine.stop()
    seen = sorted(datetime.datetime.fromisoformat(t["scheduled"]) for t in await ticks(client, handler, key))
    assert seen[0] == last_run + datetime.timedelta(seconds=1)  # the first time after the checkpoint
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(seen)] == [1.0] * (len(seen) - 1)


async def test_a_burst_of_a_thousand_same_instant_runs_all_run_once_despite_busy(
    handler: processes.HandlerProcess, client: client_.Client
) -> None:
    sink = MemorySink()
    engine = engine_.Engine(client=client, status_sink=sink)
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.endpoint))
    await engine.start()
    instant = (now() + datetime.timedelta(seconds=3)).replace(microsecond=0)
    # 50 ms each against the handler's default of 64 calls in flight: most of the burst is first answered Busy.
    # One attempt each: a Busy answer that used up an attempt would fail its run.
    spec = {
        "method": "tick",
        "params": {"seconds": 0.05},
        "schedule": "@every 3600s",
        "startTime": instant.isoformat(),
        "retry": {"maxAttempts": 1},
    }
    try:
        keys = [apply(engine, spec, key=ScheduleKey(NAMESPACE, f"burst-{index}")) for index in range(1000)]
        await eventually(lambda: all(records(engine, key) for key in keys), timeout=60)
        await eventually(lambda: all(sink.statuses.get(key, {}).get("runs") for key in keys), timeout=30)
    finally:
        await engine.stop()
    outcomes = {records(engine, key)[0]["outcome"] for key in keys}
    assert outcomes == {"Succeeded"}
    assert all(sink.statuses[key]["runs"][0]["outcome"] == "Succeeded" for key in keys)  # as written
    seen = [
        t for t in await client.call(handler.endpoint, "ticks_seen") if t["schedule"].startswith(f"{NAMESPACE}/burst-")
    ]
    assert len(seen) == 1000  # every run executed...
    assert len({t["run"] for t in seen}) == 1000  # ...each once
    assert all(record["attempts"] >= 1 for key in keys for record in records(engine, key))  # Busy ones included
    busy = engine.metrics.registry.get_sample_value(
        "schedulezero_rpc_calls_total", {"handler": f"{NAMESPACE}/probe", "code": "Busy"}
    )
    assert (busy or 0) > 0  # the burst did meet the handler's limit


async def test_a_burst_moves_every_schedule_to_its_next_time_once_and_lets_the_garbage_collector_run_again(
    handler: processes.HandlerProcess, client: client_.Client
) -> None:
    """Schedules due at one instant are fired in batches, the collector and the replies held off meanwhile:
    every call goes out before any run of the burst handles its reply. Afterwards each one's timer is at its
    next time (not due again, not lost), and the collector runs as before. Each run goes out under its own
    run id, though it was worked out before its time."""
    fired_with_collector: list[bool] = []
    sink = MemorySink()
    engine = engine_.Engine(
        client=client, status_sink=sink, on_progress=lambda key: fired_with_collector.append(gc.isenabled())
    )
    engine.set_handler(NAMESPACE, "probe", engine_.HandlerInfo(handler.endpoint))
    await engine.start()
    instant = (now() + datetime.timedelta(seconds=3)).replace(microsecond=0)
    spec = {"method": "tick", "schedule": "@every 2s", "startTime": instant.isoformat()}
    count = 3 * engine_.BURST_BATCH
    try:
        keys = [apply(engine, spec, key=ScheduleKey(NAMESPACE, f"wave-{index}")) for index in range(count)]
        await eventually(lambda: all(len(records(engine, key)) >= 2 for key in keys), timeout=60)
    finally:
        await engine.stop()
    assert gc.isenabled()
    assert len(fired_with_collector) >= count
    assert not any(fired_with_collector[:count])  # the first burst, held off
    seen = [
        t for t in await client.call(handler.endpoint, "ticks_seen") if t["schedule"].startswith(f"{NAMESPACE}/wave-")
    ]
    assert sum(t["scheduled"] == status_.rfc3339(instant) for t in seen) == count  # every first time ran...
    assert len({t["run"] for t in seen}) == len(seen)  # ...and no time twice
    second = status_.rfc3339(instant + datetime.timedelta(seconds=2))
    assert sum(t["scheduled"] == second for t in seen) == count  # and the timer came back for the next one
    # Run ids worked out ahead of the time (at apply, then after the burst) are the runs' own.
    expected = {
        runs.run_id(f"uid-{t['schedule'].partition('/')[2]}", datetime.datetime.fromisoformat(t["scheduled"])).hex
        for t in seen
    }
    assert {t["run"] for t in seen} == expected
    first = [r for key in keys for r in records(engine, key) if r["scheduledTime"] == status_.rfc3339(instant)]
    assert len(first) == count
    assert all(r["outcome"] == "Succeeded" for r in first)
    last_sent = max(datetime.datetime.fromisoformat(r["startTime"]) for r in first)
    first_answered = min(datetime.datetime.fromisoformat(r["finishTime"]) for r in first)
    assert last_sent <= first_answered
    # The handler ran the first calls well before the last one went out: their replies could have come first.
    first_run = min(t["at"] for t in seen if t["scheduled"] == status_.rfc3339(instant))
    assert first_run < last_sent.timestamp()
