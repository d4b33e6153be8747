"""Status and checkpoints read as inputs: whatever they hold, no crash, no stall, no run at a time that is not
the Schedule's, and a future time never disables catch-up nor holds a Forbid Schedule."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulezero_operator import checkpoints, engine, inputs, runs, status

UTC = datetime.UTC
NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
CREATED = datetime.datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC)
UID = "0b6f3a52-5a0e-4c41-9e43-5d2b1d0b7f11"
SPECS = [
    {"handler": "h", "method": "m", "schedule": "@every 10s", "concurrencyPolicy": "Forbid"},
    {"handler": "h", "method": "m", "schedule": "*/5 * * * *", "timeZone": "Europe/Paris"},
    {"handler": "h", "method": "m", "runAt": "2026-12-03T11:00:00Z"},
    {"handler": "h", "method": "m", "schedule": "0 0 30 2 *"},  # no time ever: nine years scanned per look
    {"handler": "h", "method": "m"},  # invalid: no times at all
]


def nominal(spec: dict[str, Any], moment: datetime.datetime) -> datetime.datetime | None:
    """The Schedule's first time after ``moment``, if any."""
    trigger = inputs.schedule_trigger(spec, CREATED)
    return trigger.next_after(moment) if trigger is not None else None


def own_entry(moment: datetime.datetime) -> dict[str, Any]:
    return {"runId": str(runs.run_id(UID, moment)), "scheduledTime": status.rfc3339(moment)}


# Times anywhere a tamperer may put them: long past, around now, the far future, the ends of datetime.
times = st.one_of(
    st.datetimes(
        min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23), timezones=st.just(UTC)
    ),
    st.integers(-3 * 86400, 3 * 86400).map(lambda s: NOW + datetime.timedelta(seconds=s)),
    st.integers(0, 3 * 8640).map(lambda k: CREATED + datetime.timedelta(seconds=10 * k)),  # @every 10s times
)
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
texts = st.one_of(times.map(status.rfc3339), st.text(max_size=30), junk)
entries = st.one_of(
    times.map(own_entry),  # the Schedule's own run id: only its trigger's times may run
    st.fixed_dictionaries({"runId": st.one_of(st.text(max_size=36), junk), "scheduledTime": texts}),
    junk,
)
records = st.fixed_dictionaries(
    {"runId": st.one_of(st.text(max_size=36), junk), "scheduledTime": texts},
    optional={
        "outcome": st.sampled_from([*status.Outcome, "Bogus"]),
        "attempts": junk,
        "error": junk,
        "trigger": junk,
        "startTime": texts,
    },
)
statuses = st.one_of(
    junk,
    st.fixed_dictionaries(
        {},
        optional={
            "lastScheduleTime": texts,
            "lastSuccessfulTime": texts,
            "active": st.one_of(st.lists(entries, max_size=30), junk),
            "runs": st.one_of(st.lists(records, max_size=10), junk),
            "counters": st.one_of(st.dictionaries(st.sampled_from(["succeeded", "missed", "x"]), junk), junk),
            "conditions": st.one_of(st.lists(junk, max_size=4), junk),
            "backfill": junk,
            "lastRunNowToken": junk,
        },
    ),
)


def believable(spec: dict[str, Any], moment: datetime.datetime) -> bool:
    return moment <= NOW + inputs.SKEW and inputs.is_nominal(inputs.schedule_trigger(spec, CREATED), moment)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=statuses, spec=st.sampled_from(SPECS), many=st.integers(0, 1))
def test_any_status_restores_to_a_history_that_runs_only_the_schedules_own_times(
    raw: Any, spec: dict[str, Any], many: int
) -> None:
    if many and isinstance(raw, dict):  # huge lists: thousands of entries, some of them the Schedule's own
        raw["active"] = [own_entry(CREATED + datetime.timedelta(seconds=i)) for i in range(5000 * many)]
    started = time.monotonic()
    history = inputs.restore_history(raw, uid=UID, spec=spec, created=CREATED, now=NOW)
    assert time.monotonic() - started < 5.0, "restoring a status stalls the loop"
    assert len(history.unfinished) <= inputs.MAX_IN_FLIGHT
    assert len(history.runs) <= inputs.MAX_RUNS
    active = raw.get("active") if isinstance(raw, dict) else None
    in_status = {
        (entry.get("runId"), status.parse_rfc3339(entry.get("scheduledTime")))
        for entry in (active if isinstance(active, list) else [])
        if isinstance(entry, dict) and isinstance(entry.get("runId"), str)
    }
    trigger = inputs.schedule_trigger(spec, CREATED)
    for moment in history.unfinished:
        assert moment <= NOW + inputs.SKEW
        assert inputs.is_nominal(trigger, moment), moment  # one time at a time: the trigger's own next_after
        assert (str(runs.run_id(UID, moment)), moment) in in_status
    for moment in (history.last_schedule_time, history.last_successful_time, history.last_failure_time):
        assert moment is None or moment <= NOW + inputs.SKEW
    json.dumps(history.render())  # what the owner writes back
    message = inputs.refused(history)
    assert message is None or len(message) < 2000


checkpoint_entries = st.one_of(
    st.lists(st.one_of(st.none(), st.integers(-(2**70), 2**70), junk), max_size=3),
    st.tuples(
        times.map(lambda t: round(t.timestamp() * 1000)), st.lists(times.map(lambda t: round(t.timestamp() * 1000)))
    ).map(list),
    junk,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.dictionaries(st.one_of(st.just(UID), st.text(max_size=8)), checkpoint_entries, max_size=6),
    wrapper=st.sampled_from(["schedules", "other"]),
    spec=st.sampled_from(SPECS),
    garbage=st.one_of(st.none(), st.text(max_size=40)),
)
def test_any_checkpoint_reads_back_to_progress_that_runs_only_the_schedules_own_times(
    entries: dict[str, Any], wrapper: str, spec: dict[str, Any], garbage: str | None
) -> None:
    text = garbage if garbage is not None else json.dumps({"version": 1, wrapper: entries})
    progress, _ = checkpoints.read_entries(text)
    trigger = inputs.schedule_trigger(spec, CREATED)
    for uid, one in progress.items():
        checked, _ = inputs.checked_progress(one, uid=uid, trigger=trigger, now=NOW)
        assert isinstance(checked, engine.Progress)
        assert checked.last_scheduled is None or checked.last_scheduled <= NOW + inputs.SKEW
        assert len(checked.in_flight) <= inputs.MAX_IN_FLIGHT
        assert all(believable(spec, t) for t in checked.in_flight)
    written = checkpoints.believed(progress, {UID: engine.Progress(NOW)}, now=NOW)
    assert set(written) <= {UID}
    checkpoints.encode(checkpoints.merge(written, {UID: engine.Progress(NOW)}))


def test_the_ends_of_time_are_no_schedules_times() -> None:
    trigger = inputs.schedule_trigger(SPECS[0], CREATED)
    ends = [datetime.datetime.min.replace(tzinfo=UTC), datetime.datetime.max.replace(tzinfo=UTC)]
    assert inputs.nominals(trigger, ends) == set()
    raw = {"active": [own_entry(moment) for moment in ends], "lastScheduleTime": "0001-01-01T00:00:00+05:00"}
    assert inputs.restore_history(raw, uid=UID, spec=SPECS[0], created=CREATED, now=NOW).unfinished == []


def test_a_future_run_in_flight_is_dropped_and_a_past_own_one_kept() -> None:
    spec = SPECS[0]
    past = nominal(spec, NOW - datetime.timedelta(minutes=1))
    assert past is not None
    future = nominal(spec, datetime.datetime(2099, 1, 1, tzinfo=UTC))
    assert future is not None
    raw = {"active": [own_entry(past), own_entry(future), {"runId": "z", "scheduledTime": "2099-01-01T00:00:00Z"}]}
    history = inputs.restore_history(raw, uid=UID, spec=spec, created=CREATED, now=NOW)
    assert history.unfinished == [past]
    message = inputs.refused(history)
    assert message is not None
    assert "2099-01-01T00:00:00" in message
    assert inputs.refused(history) is None  # said once


def test_a_future_last_schedule_time_falls_back_on_the_newest_own_record() -> None:
    spec = SPECS[0]
    ran = nominal(spec, NOW - datetime.timedelta(hours=1))
    assert ran is not None
    record = {**own_entry(ran), "outcome": "Succeeded"}
    raw = {"lastScheduleTime": "2099-01-01T00:00:00Z", "runs": [record]}
    history = inputs.restore_history(raw, uid=UID, spec=spec, created=CREATED, now=NOW)
    assert history.last_schedule_time == ran  # catch-up from there, not from 2099 (never) nor from nowhere
    assert inputs.refused(history) is not None


def test_foreign_and_wrongly_timed_runs_in_flight_are_not_the_schedules() -> None:
    spec = SPECS[0]
    off_grid = datetime.datetime(2026, 12, 3, 11, 0, 3, tzinfo=UTC)  # not on the 10 s grid
    own = nominal(spec, NOW - datetime.timedelta(seconds=30))
    assert own is not None
    raw = {
        "active": [
            own_entry(off_grid),
            {"runId": str(runs.run_id("another-uid", own)), "scheduledTime": status.rfc3339(own)},
            *[own_entry(datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(seconds=i)) for i in range(300)],
        ]
    }
    history = inputs.restore_history(raw, uid=UID, spec=spec, created=CREATED, now=NOW)
    assert history.unfinished == []


def test_a_checkpoint_keeps_its_readable_entries_and_drops_the_rest() -> None:
    good = round(NOW.timestamp() * 1000)
    text = json.dumps({"schedules": {"a": [good], "b": ["x"], "c": [good, [2**80]], "d": {}, "e": [None, [good]]}})
    progress, unreadable = checkpoints.read_entries(text)
    assert set(progress) == {"a", "e"}
    assert unreadable == 3


def test_the_checkpoint_written_back_holds_only_the_shards_own_schedules_and_believable_times() -> None:
    future = datetime.datetime(2099, 1, 1, tzinfo=UTC)
    loaded = {
        UID: engine.Progress(future, (future, NOW)),
        **{f"fake-{i}": engine.Progress(NOW) for i in range(20_000)},
    }
    kept = checkpoints.believed(loaded, {UID: engine.Progress(NOW - datetime.timedelta(seconds=1))}, now=NOW)
    assert kept == {UID: engine.Progress(None, (NOW,))}


@settings(max_examples=100, deadline=None)
@given(moments=st.lists(times, max_size=40), spec=st.sampled_from(SPECS))
def test_the_trigger_times_found_in_one_pass_are_those_found_one_by_one(
    moments: list[datetime.datetime], spec: dict[str, Any]
) -> None:
    trigger = inputs.schedule_trigger(spec, CREATED)
    assert inputs.nominals(trigger, moments) == {t for t in moments if inputs.is_nominal(trigger, t)}
