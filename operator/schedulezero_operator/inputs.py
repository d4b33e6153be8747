"""A Schedule's status and its shard's checkpoint, read as the inputs they are.

Both are the engine's memory across restarts and failovers, and both can be
written by others: anyone allowed to patch the status subresource, or to edit
ConfigMaps in the operator's namespace. So they are checked like any other
input, and what cannot be the Schedule's own is dropped rather than acted on:

- a time beyond now plus ``SKEW`` (no run can have been due yet) is refused:
  a future ``lastScheduleTime`` would disable catch-up until then, a future
  run in flight would hold a Forbid Schedule for good;
- a run in flight must be a nominal time of the Schedule's trigger, under the
  run id the operator derives for it (``runs.run_id``): anything else would
  run at a time that is not the Schedule's;
- lists are bounded (``MAX_IN_FLIGHT``, ``MAX_RUNS``, ``MAX_HANDED_RECORDS``) before anything is
  computed over them, so a huge list costs neither a stall nor a flood of runs.

What is dropped is said once, in a Warning Event on the Schedule, by its
owner, which then writes the status (and the checkpoint) back from what it
kept. The functions here are pure: the engine hands in ``now`` and the trigger.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from schedulezero_operator import runs, status, triggers

SKEW = datetime.timedelta(seconds=5)
"""How far ahead of this replica's clock a time may be and still be believed: the clocks of two replicas
differ by this much at most. A time within it costs nothing: the timer fires it when it comes."""
MAX_IN_FLIGHT = 2000
"""Runs in flight believed per Schedule, the newest: a checkpoint also lists the times a catch-up still owes
(up to the engine's catch-up limit, 1,000), so this is twice that, and bounds the work of a huge list."""
MAX_RUNS = 200
"""Run records believed per Schedule, the newest: the most both history limits together keep."""
MAX_HANDED_RECORDS = 20
"""Unwritten run records a final checkpoint hands over per Schedule, the newest."""
MAX_REPORTED = 3
"""Examples named in a Warning; the rest are counted."""
_MS = datetime.timedelta(milliseconds=1)


class Unbuilt:
    """A trigger the caller has not built: ``restore_history`` builds it from the spec."""


UNBUILT = Unbuilt()


def schedule_trigger(spec: Mapping[str, Any], created: datetime.datetime) -> triggers.Trigger | None:
    """The Schedule's trigger, or None when its spec has none (the engine reports why elsewhere)."""
    try:
        return triggers.build_trigger(spec, created=created)
    except Exception:  # an invalid spec has no times, so nothing of its status runs
        return None


def is_nominal(trigger: triggers.Trigger | None, moment: datetime.datetime) -> bool:
    """Whether ``moment`` is one of the trigger's times, at the millisecond that status and checkpoints keep."""
    return moment in nominals(trigger, [moment])


def nominals(trigger: triggers.Trigger | None, moments: Iterable[datetime.datetime]) -> set[datetime.datetime]:
    """Those of ``moments`` that are times of the trigger, at the millisecond.

    In ascending order, each trigger time found answers for every moment before it: a trigger with no time
    left (a cron of February 30th scans nine years to say so) costs one look, not one per moment.
    """
    found: set[datetime.datetime] = set()
    if trigger is None:
        return found
    cursor: datetime.datetime | None = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    for moment in sorted(set(moments)):
        try:
            if cursor is not None and cursor < moment - _MS:
                cursor = trigger.next_after(moment - _MS)
        except (OverflowError, ValueError):  # at the ends of what datetime holds
            continue
        if cursor is None:
            break
        if abs(cursor - moment) < _MS:
            found.add(moment)
    return found


def restore_history(
    raw: Any,
    *,
    uid: str,
    spec: Mapping[str, Any],
    created: datetime.datetime,
    now: datetime.datetime,
    trigger: triggers.Trigger | Unbuilt | None = UNBUILT,
) -> status.History:
    """The History a Schedule's status describes, without what cannot be the Schedule's.

    What was dropped is listed in ``History.refused``, for the owner to report (``refused``). ``trigger``
    is the Schedule's when the caller has it already (a standby follows every status its owner writes):
    otherwise it is built from ``spec``.
    """
    history = status.History.restore(raw if isinstance(raw, dict) else None)
    if not isinstance(raw, dict):
        if raw:
            history.refused.append("status is not an object")
        return history
    if isinstance(trigger, Unbuilt):
        trigger = schedule_trigger(spec, created)
    refused = history.refused
    limit = now + SKEW

    kept: list[status.RunRecord] = []
    newest = sorted(history.runs, key=lambda r: r.scheduled_time, reverse=True)[:MAX_RUNS]
    if len(history.runs) > MAX_RUNS:
        refused.append(f"{len(history.runs) - MAX_RUNS} run records beyond the newest {MAX_RUNS}")
    times = nominals(trigger, [r.scheduled_time for r in newest if r.scheduled_time <= limit])
    for record in newest:
        if record.scheduled_time > limit:
            refused.append(
                f"run record {record.run_id!r:.60} at {status.rfc3339(record.scheduled_time)}, in the future"
            )
        elif record.trigger != "run-now" and not _own(uid, times, record.scheduled_time, record.run_id):
            refused.append(f"run record {record.run_id!r:.60} at {status.rfc3339(record.scheduled_time)}: "
                           "not a run of this Schedule")  # fmt: skip
        else:
            kept.append(record)
    history.runs = kept

    last = history.last_schedule_time
    if last is not None and last > limit:
        scheduled = [r.scheduled_time for r in kept if r.trigger != "run-now"]
        history.last_schedule_time = max(scheduled) if scheduled else None
        refused.append(
            f"lastScheduleTime {status.rfc3339(last)} is in the future; catching up from "
            f"{status.rfc3339(history.last_schedule_time) or 'the next time due'}"
        )
    for name in ("last_successful_time", "last_failure_time"):
        if (getattr(history, name) or now) > limit:
            setattr(history, name, None)

    history.unfinished = []
    active = raw.get("active")
    entries = active if isinstance(active, list) else []
    if active is not None and not isinstance(active, list):
        refused.append("active is not a list")
    candidates: list[tuple[datetime.datetime, str]] = []
    for entry in entries:
        nominal = status.parse_rfc3339(entry.get("scheduledTime")) if isinstance(entry, dict) else None
        run_id = entry.get("runId") if isinstance(entry, dict) else None
        if nominal is None or not isinstance(run_id, str):
            refused.append(f"run in flight {_short(entry)}: no run id and time")
        elif nominal > limit:
            refused.append(f"run in flight {run_id!r:.60} at {status.rfc3339(nominal)}, in the future")
        elif entry.get("trigger") == "run-now":
            continue  # a manual run is not resumed: its token is not in status any more to derive its id
        else:
            candidates.append((nominal, run_id))
    candidates.sort(reverse=True)
    if len(candidates) > MAX_IN_FLIGHT:
        refused.append(f"{len(candidates) - MAX_IN_FLIGHT} runs in flight beyond the newest {MAX_IN_FLIGHT}")
    times = nominals(trigger, [moment for moment, _ in candidates[:MAX_IN_FLIGHT]])
    for moment, run_id in candidates[:MAX_IN_FLIGHT]:
        if _own(uid, times, moment, run_id):
            history.unfinished.append(moment)
        else:
            refused.append(f"run in flight {run_id!r:.60} at {status.rfc3339(moment)}: not a run of this Schedule")
    history.unfinished.sort()
    return history


def checked_progress(
    progress: Any, *, uid: str, trigger: triggers.Trigger | None, now: datetime.datetime
) -> tuple[Any, list[str]]:
    """A checkpoint's Progress of one Schedule without what cannot be the Schedule's, and what was dropped.

    Returns an ``engine.Progress`` of the same class as ``progress`` (typed Any: the engine imports this
    module, not the other way round).
    """
    refused: list[str] = []
    limit = now + SKEW
    last = progress.last_scheduled
    if last is not None and last > limit:
        refused.append(f"lastScheduled {status.rfc3339(last)} is in the future")
        last = None
    in_flight, dropped = bounded_times(progress.in_flight, limit=limit)
    if dropped:
        refused.append(f"{dropped} runs in flight in the future or beyond the newest {MAX_IN_FLIGHT}")
    kept = []
    times = nominals(trigger, in_flight)
    for moment in in_flight:
        if moment in times:
            kept.append(moment)
        else:
            refused.append(f"run in flight at {status.rfc3339(moment)}: not a time of this Schedule")
    records = [record.render() for record in handed_records(progress.records, limit=limit, refused=refused)]
    return type(progress)(last, tuple(kept), tuple(records)), refused


def handed_records(raw: Any, *, limit: datetime.datetime, refused: list[str]) -> list[status.RunRecord]:
    """The run records a final checkpoint handed over that can be the Schedule's: well-formed, not after
    ``limit``, the newest ``MAX_HANDED_RECORDS``; what is dropped is added to ``refused``."""
    records: list[status.RunRecord] = []
    unreadable = 0
    for data in raw if isinstance(raw, (list, tuple)) else []:
        record = status.RunRecord.restore(data) if isinstance(data, dict) else None
        if record is None or record.scheduled_time > limit:
            unreadable += 1
        else:
            records.append(record)
    records.sort(key=lambda r: r.scheduled_time)
    if len(records) > MAX_HANDED_RECORDS:
        unreadable += len(records) - MAX_HANDED_RECORDS
        records = records[-MAX_HANDED_RECORDS:]
    if unreadable:
        refused.append(f"{unreadable} handed-over run records malformed, in the future or beyond the newest "
                       f"{MAX_HANDED_RECORDS}")  # fmt: skip
    return records


def bounded_times(
    times: Iterable[datetime.datetime], *, limit: datetime.datetime
) -> tuple[list[datetime.datetime], int]:
    """The newest ``MAX_IN_FLIGHT`` of ``times`` not after ``limit``, oldest first, and how many were dropped."""
    every = sorted(set(times))
    believable = [t for t in every if t <= limit][-MAX_IN_FLIGHT:]
    return believable, len(every) - len(believable)


def refused(history: status.History) -> str | None:
    """What restoring the status dropped, as one Warning's message, once: None when nothing was, or once said."""
    if not history.refused:
        return None
    message = summary("status", history.refused)
    history.refused = []
    return message


def summary(what: str, refused: list[str]) -> str:
    """One Warning's message: the first few of what was dropped, and how many in all."""
    shown = "; ".join(refused[:MAX_REPORTED])
    more = f" (and {len(refused) - MAX_REPORTED} more)" if len(refused) > MAX_REPORTED else ""
    return f"{what} entries dropped, not the Schedule's own: {shown}{more}; it is written back without them"


def _own(uid: str, times: set[datetime.datetime], moment: datetime.datetime, run_id: str) -> bool:
    return moment in times and run_id == str(runs.run_id(uid, moment))


def _short(value: Any) -> str:
    return repr(value)[:60]
