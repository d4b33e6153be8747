"""The per-Schedule series of ``/metrics``, kept as plain numbers and rendered at scrape time.

With 100,000 Schedules a replica exports a few hundred thousand series.
prometheus_client's children would cost a lock and several objects per series
and a generic formatting pass per sample; here each Schedule is one small
record the engine updates in place (no allocation per run), and a scrape
renders the lines straight from the records, with each Schedule's labels
escaped once.

A Schedule has only the series that say something: runs for the outcomes that
happened, its next run while it has one, its last success once there was one,
and ``suspended`` only while it is suspended (then it has no next run). A
Schedule that succeeds and sometimes fails has four; docs/operations.md lists
them.

The engine's thread updates the records while the HTTP server's thread renders
them: structural changes are dict insertions and removals, and a scrape copies
the dict's values first (one C-level call under the GIL), so it never iterates
a dict that changes size. A scrape may see one run counted in ``runs`` and not
yet in ``last_success``; the next one sees both.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from schedulezero_operator.sinks import ScheduleKey
from schedulezero_operator.status import Outcome

OUTCOMES = tuple(Outcome)
_INDEX = {outcome: index for index, outcome in enumerate(OUTCOMES)}

RUNS = "schedulezero_schedule_runs"
REQUESTED = "schedulezero_schedule_requested_runs"
NEXT_RUN = "schedulezero_schedule_next_run_timestamp_seconds"
LAST_SUCCESS = "schedulezero_schedule_last_success_timestamp_seconds"
SUSPENDED = "schedulezero_schedule_suspended"

_HELP = {
    RUNS: "Runs by outcome, for the outcomes that happened.",
    REQUESTED: "Runs a user asked for rather than the schedule (trigger run-now or backfill), by outcome; "
    "also counted in schedulezero_schedule_runs_total.",
    NEXT_RUN: "Nominal time of the next run, as a Unix timestamp.",
    LAST_SUCCESS: "When the last successful run finished, as a Unix timestamp.",
    SUSPENDED: "1 while a Schedule is suspended; absent otherwise.",
}


def _escape(value: str) -> str:
    """A label value as the text format wants it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Record:
    """What one Schedule's series show; about 200 bytes with its label strings."""

    __slots__ = ("key", "last_success", "namespace", "next_run", "requested", "runs", "schedule", "suspended")

    def __init__(self, key: ScheduleKey) -> None:
        self.key = key
        self.namespace = f'namespace="{_escape(key.namespace)}"'
        self.schedule = f'schedule="{_escape(key.name)}"'
        self.runs = [0] * len(OUTCOMES)
        """Runs by outcome, indexed as ``OUTCOMES``: a list of fixed size, safe to read while it counts."""
        self.requested: dict[tuple[str, Outcome], int] | None = None
        """Requested runs by trigger and outcome; None until the first (most Schedules never have one)."""
        self.next_run: float | None = None
        self.last_success: float | None = None
        self.suspended = False


class ScheduleSeries:
    """Every Schedule's series: updated by the engine, read by ``render`` (``/metrics``) or ``collect``.

    ``collect`` is prometheus_client's Collector protocol, so the registry's
    Python API (``get_sample_value``) and any other exposition see the same
    series; ``render`` is the fast path ``/metrics`` serves.
    """

    def __init__(self) -> None:
        self._records: dict[ScheduleKey, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, key: ScheduleKey) -> _Record:
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record(key)
        return record

    def applied(self, key: ScheduleKey, *, suspended: bool) -> None:
        """The Schedule was applied: its record is made now, not on its first run (one of a burst, maybe)."""
        self._record(key).suspended = suspended

    def next_run(self, key: ScheduleKey, when: datetime.datetime | None) -> None:
        """Its next nominal time, or None while it has none (suspended, invalid, finished)."""
        if when is not None:
            self._record(key).next_run = when.timestamp()
        elif (record := self._records.get(key)) is not None:
            record.next_run = None

    def run_ended(
        self, key: ScheduleKey, outcome: Outcome, *, trigger: str, finished: datetime.datetime | None
    ) -> None:
        """A run ended (or was judged skipped or missed): counted, and its finish kept if it succeeded."""
        record = self._record(key)
        record.runs[_INDEX[outcome]] += 1
        if trigger != "schedule":
            requested = record.requested
            if requested is None:
                requested = record.requested = {}
            requested[trigger, outcome] = requested.get((trigger, outcome), 0) + 1
        if outcome is Outcome.SUCCEEDED and finished is not None:
            record.last_success = finished.timestamp()

    def forget(self, key: ScheduleKey) -> None:
        """The Schedule is gone: the next scrape no longer shows it."""
        self._records.pop(key, None)

    # -- reading ------------------------------------------------------------------

    def render(self) -> str:
        """The series in Prometheus' text format (0.0.4), labels in prometheus_client's (sorted) order."""
        records = list(self._records.values())
        lines: list[str] = []
        add = lines.append
        add(f"# HELP {RUNS}_total {_HELP[RUNS]}\n# TYPE {RUNS}_total counter\n")
        for record in records:
            for index, count in enumerate(record.runs):
                if count:
                    add(f'{RUNS}_total{{{record.namespace},outcome="{OUTCOMES[index]}",{record.schedule}}} {count}\n')
        add(f"# HELP {REQUESTED}_total {_HELP[REQUESTED]}\n# TYPE {REQUESTED}_total counter\n")
        for record in records:
            if record.requested:
                for (trigger, outcome), count in list(record.requested.items()):
                    labels = f'{record.namespace},outcome="{outcome}",{record.schedule},trigger="{trigger}"'
                    add(f"{REQUESTED}_total{{{labels}}} {count}\n")
        add(f"# HELP {NEXT_RUN} {_HELP[NEXT_RUN]}\n# TYPE {NEXT_RUN} gauge\n")
        for record in records:
            if (when := record.next_run) is not None:
                add(f"{NEXT_RUN}{{{record.namespace},{record.schedule}}} {when!r}\n")
        add(f"# HELP {LAST_SUCCESS} {_HELP[LAST_SUCCESS]}\n# TYPE {LAST_SUCCESS} gauge\n")
        for record in records:
            if (when := record.last_success) is not None:
                add(f"{LAST_SUCCESS}{{{record.namespace},{record.schedule}}} {when!r}\n")
        add(f"# HELP {SUSPENDED} {_HELP[SUSPENDED]}\n# TYPE {SUSPENDED} gauge\n")
        for record in records:
            if record.suspended:
                add(f"{SUSPENDED}{{{record.namespace},{record.schedule}}} 1\n")
        return "".join(lines)

    def collect(self) -> Iterator[Metric]:
        """The same series as prometheus_client families (slower than ``render``: for the Python API)."""
        records = list(self._records.values())
        runs = CounterMetricFamily(RUNS, _HELP[RUNS], labels=["namespace", "schedule", "outcome"])
        requested = CounterMetricFamily(
            REQUESTED, _HELP[REQUESTED], labels=["namespace", "schedule", "trigger", "outcome"]
        )
        next_run = GaugeMetricFamily(NEXT_RUN, _HELP[NEXT_RUN], labels=["namespace", "schedule"])
        last_success = GaugeMetricFamily(LAST_SUCCESS, _HELP[LAST_SUCCESS], labels=["namespace", "schedule"])
        suspended = GaugeMetricFamily(SUSPENDED, _HELP[SUSPENDED], labels=["namespace", "schedule"])
        for record in records:
            labels = [record.key.namespace, record.key.name]
            for index, count in enumerate(record.runs):
                if count:
                    runs.add_metric([*labels, str(OUTCOMES[index])], count)
            for (trigger, outcome), count in list((record.requested or {}).items()):
                requested.add_metric([*labels, trigger, str(outcome)], count)
            if record.next_run is not None:
                next_run.add_metric(labels, record.next_run)
            if record.last_success is not None:
                last_success.add_metric(labels, record.last_success)
            if record.suspended:
                suspended.add_metric(labels, 1)
        yield from (runs, requested, next_run, last_success, suspended)
