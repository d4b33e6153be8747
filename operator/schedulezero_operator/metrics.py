"""The operator's Prometheus metrics (listed with their labels in docs/operations.md).

Status writes are coalesced, so metrics are where every single run is
counted. Per-schedule gauges are removed with their Schedule so a deleted
Schedule disappears from the next scrape.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

import schedulezero_handler
from schedulezero_operator import election, sinks
from schedulezero_operator.budget import Budget

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class OperatorMetrics:
    """All operator metrics, in a registry of their own (one per engine)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        schedule = ["namespace", "schedule"]
        self.runs = Counter(
            "schedulezero_schedule_runs", "Runs by outcome.", [*schedule, "outcome"], registry=self.registry
        )
        self.requested_runs = Counter(
            "schedulezero_schedule_requested_runs",
            "Runs a user asked for rather than the schedule (trigger run-now or backfill), by outcome; "
            "also counted in schedulezero_schedule_runs_total.",
            [*schedule, "trigger", "outcome"],
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "schedulezero_schedule_run_duration_seconds",
            "Time from a run's first attempt to its last one's end.",
            schedule,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.fire_lateness = Histogram(
            "schedulezero_schedule_fire_lateness_seconds",
            "Time from a run's nominal time (plus its jitter) to its first call being sent.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.next_run = Gauge(
            "schedulezero_schedule_next_run_timestamp_seconds",
            "Nominal time of the next run, as a Unix timestamp.",
            schedule,
            registry=self.registry,
        )
        self.last_success = Gauge(
            "schedulezero_schedule_last_success_timestamp_seconds",
            "When the last successful run finished, as a Unix timestamp.",
            schedule,
            registry=self.registry,
        )
        self.suspended = Gauge(
            "schedulezero_schedule_suspended", "1 while a Schedule is suspended.", schedule, registry=self.registry
        )
        self.rpc_calls = Counter(
            "schedulezero_rpc_calls", "Calls to handlers by result code.", ["handler", "code"], registry=self.registry
        )
        self.rpc_duration = Histogram(
            "schedulezero_rpc_call_duration_seconds",
            "Duration of one call attempt to a handler.",
            ["handler"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fenced_sends = Counter(
            "schedulezero_fenced_sends",
            "Attempts not sent because this replica could no longer prove it owned the Schedule's shard "
            "(its last renew older than the renew deadline): the run is left to the shard's new owner.",
            registry=self.registry,
        )
        self.status_writes = Counter(
            "schedulezero_status_writes", "Schedule status writes (coalesced runs).", registry=self.registry
        )
        self.api_requests = Counter(
            "schedulezero_api_requests",
            "Requests to the Kubernetes API let through by the API budget, by kind.",
            ["kind"],
            registry=self.registry,
        )
        build_info = Gauge(
            "schedulezero_build_info",
            "Version of the running operator.",
            ["version", "python_version"],
            registry=self.registry,
        )
        build_info.labels(schedulezero_handler.__version__, platform.python_version()).set(1)
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def series(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: on a burst of fires the lookup costs more than the update."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def drop(self, metric: MetricWrapperBase, *labels: str) -> None:
        """Removes a series, so the next scrape no longer shows it."""
        self._children.pop((metric, labels), None)
        with contextlib.suppress(KeyError):
            metric.remove(*labels)

    def forget(self, namespace: str, schedule: str) -> None:
        """Drops a removed Schedule's series."""
        for metric in (self.next_run, self.last_success, self.suspended, self.run_duration):
            self.drop(metric, namespace, schedule)
        for outcome in ("Succeeded", "Failed", "TimedOut", "Skipped", "Missed", "Cancelled"):
            self.drop(self.runs, namespace, schedule, outcome)
            for trigger in ("run-now", "backfill"):
                self.drop(self.requested_runs, namespace, schedule, trigger, outcome)

    def track_status(self, writer: sinks.StatusWriter, budget: Budget | None = None) -> None:
        """Registers the status backlog (and the API budget's queue) as gauges read at scrape time."""
        self.registry.register(_BacklogCollector(writer, budget))

    def track_election(self, elector: election.Elector) -> HaMetrics:
        """Registers the metrics of sharded election and checkpoints."""
        self.registry.register(_ElectionCollector(elector))
        return HaMetrics(self.registry)

    def serve(self, *, port: int, address: str = "0.0.0.0") -> None:
        """Serves ``/metrics`` from a background thread."""
        prometheus_client.start_http_server(port, addr=address, registry=self.registry)


class HaMetrics:
    """What the election and the checkpoints count as they go."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "schedulezero_shard_transitions", "Shards this replica acquired or lost.", ["change"], registry=registry
        )
        self.checkpoint_writes = Counter(
            "schedulezero_checkpoint_writes", "Checkpoint writes.", ["shard"], registry=registry
        )
        self.checkpoint_size = Gauge(
            "schedulezero_checkpoint_size_bytes", "Size of the last checkpoint written.", ["shard"], registry=registry
        )


class _BacklogCollector(Collector):
    """How far statuses lag: what waits for a write, and for how long."""

    def __init__(self, writer: sinks.StatusWriter, budget: Budget | None) -> None:
        self._writer = writer
        self._budget = budget

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending, oldest = self._writer.backlog()
        yield GaugeMetricFamily(
            "schedulezero_status_pending", "Schedules with a status change not yet written.", value=pending
        )
        yield GaugeMetricFamily(
            "schedulezero_status_oldest_pending_seconds",
            "Age of the oldest status change not yet written: how stale a status may be now.",
            value=oldest,
        )
        if self._budget is not None:
            yield GaugeMetricFamily(
                "schedulezero_api_budget_waiting",
                "Requests waiting for the API budget's next token.",
                value=self._budget.waiting,
            )


class _ElectionCollector(Collector):
    """Shards held and the age of each one's last renew, read from the elector at scrape time."""

    def __init__(self, elector: election.Elector) -> None:
        self._elector = elector

    def collect(self) -> Iterator[GaugeMetricFamily]:
        elector = self._elector
        held = GaugeMetricFamily("schedulezero_shards_held", "Shards this replica holds now.", labels=["identity"])
        held.add_metric([elector.identity], len(elector.held()))
        yield held
        age = GaugeMetricFamily(
            "schedulezero_shard_renew_age_seconds",
            "Seconds since this replica last renewed each shard it holds; it stops acting at the renew deadline.",
            labels=["shard"],
        )
        now = elector.clock()
        for shard, renewed in sorted(elector.renewed.items()):
            age.add_metric([str(shard)], now - renewed)
        yield age
        members = GaugeMetricFamily("schedulezero_replicas_live", "Operator replicas this one sees alive.")
        members.add_metric([], elector.live_members)
        yield members
