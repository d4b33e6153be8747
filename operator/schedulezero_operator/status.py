"""A Schedule's observed state, and its rendering as its ``status`` (docs/architecture.md).

The status is also the engine's memory across restarts: ``lastScheduleTime``
says where catch-up starts, the run history and counters carry on, and
``lastRunNowToken`` keeps a manual run from running twice. So ``restore`` reads
back exactly what ``render`` writes.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from typing import Any

RESULT_LIMIT = 4096
TRUNCATED = "…[truncated]"


class Outcome(enum.StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    SKIPPED = "Skipped"
    MISSED = "Missed"
    CANCELLED = "Cancelled"


KEPT_AS_SUCCESSFUL = frozenset({Outcome.SUCCEEDED, Outcome.SKIPPED})
"""Outcomes counted against successfulRunsHistoryLimit; the others against failedRunsHistoryLimit."""

COUNTER_OF = {
    Outcome.SUCCEEDED: "succeeded",
    Outcome.FAILED: "failed",
    Outcome.TIMED_OUT: "failed",
    Outcome.CANCELLED: "failed",
    Outcome.MISSED: "missed",
    Outcome.SKIPPED: "skipped",
}


def rfc3339(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text)
        return parsed.astimezone(datetime.UTC) if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
    except (ValueError, OverflowError):  # not a time, or one an offset takes out of what datetime holds
        return None


def cut_result(value: Any) -> str:
    """The result as JSON, cut at 4 KiB (UTF-8) with a marker so nobody mistakes it for the whole."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    encoded = text.encode()
    if len(encoded) <= RESULT_LIMIT:
        return text
    room = RESULT_LIMIT - len(TRUNCATED.encode())
    return encoded[:room].decode(errors="ignore") + TRUNCATED


TRIGGERS = ("schedule", "run-now", "backfill")


@dataclasses.dataclass
class RunRecord:
    """A finished, skipped or missed run."""

    run_id: str
    scheduled_time: datetime.datetime
    outcome: Outcome
    start_time: datetime.datetime | None = None
    finish_time: datetime.datetime | None = None
    attempts: int = 0
    result: str | None = None
    error: dict[str, str] | None = None
    endpoint: str | None = None
    """Where the last attempt went: with handler replicas, the pod that served (or failed) the run."""
    trigger: str = "schedule"
    """What started the run: its schedule, ``run-now`` or ``backfill``."""

    def render(self) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "runId": self.run_id,
            "scheduledTime": rfc3339(self.scheduled_time),
            "outcome": str(self.outcome),
            "attempts": self.attempts,
        }
        if self.start_time is not None:
            rendered["startTime"] = rfc3339(self.start_time)
        if self.finish_time is not None:
            rendered["finishTime"] = rfc3339(self.finish_time)
        if self.start_time is not None and self.finish_time is not None:
            rendered["durationSeconds"] = round((self.finish_time - self.start_time).total_seconds(), 6)
        if self.result is not None:
            rendered["result"] = self.result
        if self.error is not None:
            rendered["error"] = self.error
        if self.endpoint is not None:
            rendered["endpoint"] = self.endpoint
        if self.trigger != "schedule":
            rendered["trigger"] = self.trigger
        return rendered

    @classmethod
    def restore(cls, data: dict[str, Any]) -> RunRecord | None:
        scheduled = parse_rfc3339(data.get("scheduledTime"))
        try:
            outcome = Outcome(str(data.get("outcome")))
        except ValueError:
            return None
        if scheduled is None or not isinstance(data.get("runId"), str):
            return None
        error = data.get("error")
        attempts = data.get("attempts")
        return cls(
            run_id=data["runId"],
            scheduled_time=scheduled,
            outcome=outcome,
            start_time=parse_rfc3339(data.get("startTime")),
            finish_time=parse_rfc3339(data.get("finishTime")),
            attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0 else 0,
            result=data.get("result") if isinstance(data.get("result"), str) else None,
            error={str(k): str(v) for k, v in error.items()} if isinstance(error, dict) else None,
            endpoint=data.get("endpoint") if isinstance(data.get("endpoint"), str) else None,
            trigger=data["trigger"] if data.get("trigger") in TRIGGERS else "schedule",
        )


@dataclasses.dataclass
class Condition:
    type: str
    status: str
    reason: str
    message: str
    last_transition_time: datetime.datetime
    observed_generation: int | None = None

    def render(self) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": rfc3339(self.last_transition_time.replace(microsecond=0)),
        }
        if self.observed_generation is not None:
            rendered["observedGeneration"] = self.observed_generation
        return rendered


@dataclasses.dataclass
class History:
    """What the status remembers: run records, counters and the times users look at."""

    runs: list[RunRecord] = dataclasses.field(default_factory=list)
    """Newest first."""
    counters: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"succeeded": 0, "failed": 0, "missed": 0, "skipped": 0}
    )
    last_schedule_time: datetime.datetime | None = None
    last_successful_time: datetime.datetime | None = None
    last_failure_time: datetime.datetime | None = None
    last_run_now_token: str | None = None
    conditions: dict[str, Condition] = dataclasses.field(default_factory=dict)
    unfinished: list[datetime.datetime] = dataclasses.field(default_factory=list)
    """Nominal times of runs a previous operator left in ``active``: after a crash they run again."""
    backfill: dict[str, Any] | None = None
    """The last backfill request and how far it got (request, from, to, total, done, state, message)."""
    refused: list[str] = dataclasses.field(default_factory=list)
    """What restoring a status dropped as not the Schedule's own (``inputs.restore_history``), until reported."""

    def record(self, run: RunRecord, *, successful_limit: int, failed_limit: int) -> None:
        """Adds a run (newest first, by scheduled time) and trims each kind to its limit."""
        self.counters[COUNTER_OF[run.outcome]] += 1
        if run.outcome is Outcome.SUCCEEDED:
            self.last_successful_time = run.finish_time
        elif run.outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
            self.last_failure_time = run.finish_time
        self.runs.append(run)
        self.runs.sort(key=lambda r: r.scheduled_time, reverse=True)
        kept, successful, failed = [], 0, 0
        for record in self.runs:
            if record.outcome in KEPT_AS_SUCCESSFUL:
                successful += 1
                if successful <= successful_limit:
                    kept.append(record)
            else:
                failed += 1
                if failed <= failed_limit:
                    kept.append(record)
        self.runs = kept

    def set_condition(
        self, type_: str, status: str, reason: str, message: str, *, now: datetime.datetime, generation: int | None
    ) -> None:
        """Sets a condition, keeping lastTransitionTime unless the status changes."""
        current = self.conditions.get(type_)
        since = current.last_transition_time if current is not None and current.status == status else now
        self.conditions[type_] = Condition(type_, status, reason, message, since, generation)

    def render(self) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "conditions": [c.render() for c in self.conditions.values()],
            "runs": [r.render() for r in self.runs],
            "counters": dict(self.counters),
        }
        for field, value in (
            ("lastScheduleTime", rfc3339(self.last_schedule_time)),
            ("lastSuccessfulTime", rfc3339(self.last_successful_time)),
            ("lastFailureTime", rfc3339(self.last_failure_time)),
            ("lastRunNowToken", self.last_run_now_token),
            ("backfill", self.backfill),
        ):
            if value is not None:
                rendered[field] = value
        return rendered

    @classmethod
    def restore(cls, status: dict[str, Any] | None) -> History:
        """The history a previously written status describes; unreadable parts are dropped, not fatal."""
        history = cls()
        if not status or not isinstance(status, dict):
            return history
        history.runs = [
            r for r in (RunRecord.restore(d) for d in _list(status.get("runs")) if isinstance(d, dict)) if r
        ]
        counters = status.get("counters")
        for name in history.counters:
            value = counters.get(name) if isinstance(counters, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                history.counters[name] = value
        history.last_schedule_time = parse_rfc3339(status.get("lastScheduleTime"))
        history.last_successful_time = parse_rfc3339(status.get("lastSuccessfulTime"))
        history.last_failure_time = parse_rfc3339(status.get("lastFailureTime"))
        token = status.get("lastRunNowToken")
        history.last_run_now_token = token if isinstance(token, str) else None
        backfill = status.get("backfill")
        if isinstance(backfill, dict) and (
            isinstance(backfill.get("request"), str)
            or (isinstance(backfill.get("from"), str) and isinstance(backfill.get("to"), str))
        ):
            history.backfill = {  # only what the CRD's schema admits: anything else would fail every status write
                k: v
                for k, v in backfill.items()
                if (k in BACKFILL_TEXT and isinstance(v, str))
                or (k in BACKFILL_COUNTS and isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                or (k == "state" and v in BACKFILL_STATES)
            }
            if backfill.get("state") == "Running":  # the operator that ran it stopped: what is left is not run
                history.backfill["state"] = "Interrupted"
        for run in _list(status.get("active")):
            scheduled = parse_rfc3339(run.get("scheduledTime")) if isinstance(run, dict) else None
            if scheduled is not None:
                history.unfinished.append(scheduled)
        for data in _list(status.get("conditions")):
            since = parse_rfc3339(data.get("lastTransitionTime")) if isinstance(data, dict) else None
            if since is not None and data.get("type") in CONDITIONS:
                generation = data.get("observedGeneration")
                history.conditions[data["type"]] = Condition(
                    data["type"],
                    str(data.get("status", "Unknown")),
                    str(data.get("reason", "")),
                    str(data.get("message", "")),
                    since,
                    generation if isinstance(generation, int) and not isinstance(generation, bool) else None,
                )
        return history


BACKFILL_TEXT = ("request", "from", "to", "message")
BACKFILL_COUNTS = ("total", "done")
BACKFILL_STATES = ("Running", "Complete", "Refused", "Interrupted", "Cancelled")
"""status.backfill's fields as the CRD has them."""

CONDITIONS = ("Ready", "Suspended", "Completed")
"""The conditions the engine sets: others found in a status are not carried on."""


def _list(value: Any) -> list[Any]:
    """A status field that should be a list, or nothing: any other type is another writer's."""
    return value if isinstance(value, list) else []
