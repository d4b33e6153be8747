"""The operator's Prometheus metrics (listed with their labels in docs/operations.md).

Status writes are coalesced, so metrics are where every single run is
counted. The series of each Schedule are few and cheap by design (see
``schedule_series``): counters and gauges rendered from one small record per
Schedule, removed with their Schedule so a deleted Schedule disappears from the
next scrape. Run durations are a histogram per handler and method; one per
Schedule as well (``per_schedule_histograms``) is an option for installations
small enough to afford 17 series per Schedule.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import http.server
import platform
import threading
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

import schedulezero_handler
from schedulezero_operator import election, sinks, status
from schedulezero_operator.budget import Budget
from schedulezero_operator.schedule_series import ScheduleSeries
from schedulezero_operator.sinks import ScheduleKey

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

Readiness = Callable[[], tuple[bool, str]]
"""Whether the replica is ready, and a line saying why (or why not). Called from the server's thread, so it
reads only plain attributes."""


class OperatorMetrics:
    """All operator metrics, in a registry of their own (one per engine).

    ``registry`` holds everything ``/metrics`` shows, for the Python API; the
    served text is rendered faster, from the fixed metrics and the per-Schedule
    records separately (``render``).
    """

    def __init__(self, *, per_schedule_histograms: bool = False) -> None:
        self.registry = CollectorRegistry()
        self._fixed = CollectorRegistry()
        """Everything but the per-Schedule counters and gauges: few series, rendered by prometheus_client."""
        self.schedules = ScheduleSeries()
        self.registry.register(self._fixed)
        self.registry.register(self.schedules)
        self.per_schedule_histograms = per_schedule_histograms
        self._histograms_of: dict[ScheduleKey, set[tuple[str, ...]]] = {}
        """With per-Schedule histograms, the duration series each Schedule has, removed with it."""
        self.run_duration = Histogram(
            "schedulezero_schedule_run_duration_seconds",
            "Time from a run's first attempt to its last one's end, by handler and method"
            + (" and Schedule." if per_schedule_histograms else "."),
            ["handler", "method", *(["namespace", "schedule"] if per_schedule_histograms else [])],
            buckets=DURATION_BUCKETS,
            registry=self._fixed,
        )
        self.fire_lateness = Histogram(
            "schedulezero_schedule_fire_lateness_seconds",
            "Time from a run's nominal time (plus its jitter) to its first call being sent.",
            buckets=LATENCY_BUCKETS,
            registry=self._fixed,
        )
        self.rpc_calls = Counter(
            "schedulezero_rpc_calls", "Calls to handlers by result code.", ["handler", "code"], registry=self._fixed
        )
        self.rpc_duration = Histogram(
            "schedulezero_rpc_call_duration_seconds",
            "Duration of one call attempt to a handler.",
            ["handler"],
            buckets=LATENCY_BUCKETS,
            registry=self._fixed,
        )
        self.fenced_sends = Counter(
            "schedulezero_fenced_sends",
            "Attempts not sent because this replica could no longer prove it owned the Schedule's shard "
            "(its last renew older than the renew deadline): the run is left to the shard's new owner.",
            registry=self._fixed,
        )
        self.status_writes = Counter(
            "schedulezero_status_writes", "Schedule status writes (coalesced runs).", registry=self._fixed
        )
        self.api_requests = Counter(
            "schedulezero_api_requests",
            "Requests to the Kubernetes API let through by the API budget, by kind.",
            ["kind"],
            registry=self._fixed,
        )
        build_info = Gauge(
            "schedulezero_build_info",
            "Version of the running operator.",
            ["version", "python_version"],
            registry=self._fixed,
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

    # -- what the engine tells ----------------------------------------------------

    def schedule_applied(self, key: ScheduleKey, *, suspended: bool) -> None:
        """A Schedule was applied (or changed): whether it is suspended."""
        self.schedules.applied(key, suspended=suspended)

    def next_run(self, key: ScheduleKey, when: datetime.datetime | None) -> None:
        """A Schedule's next nominal time, or None while it has none. Every replica keeps every Schedule's
        timer, so each one's gauge follows it, owner or not."""
        self.schedules.next_run(key, when)

    def run_ended(self, key: ScheduleKey, record: status.RunRecord, *, handler: str, method: str) -> None:
        """Counts a run that ended (or was judged skipped or missed), and observes its duration if it ran.

        ``handler`` is ``namespace/name``, as on the call metrics.
        """
        self.schedules.run_ended(key, record.outcome, trigger=record.trigger, finished=record.finish_time)
        if record.start_time is None or record.finish_time is None:
            return
        labels: tuple[str, ...] = (handler, method)
        if self.per_schedule_histograms:
            labels = (handler, method, key.namespace, key.name)
            self._histograms_of.setdefault(key, set()).add(labels)
        self.series(self.run_duration, *labels).observe((record.finish_time - record.start_time).total_seconds())

    def forget(self, key: ScheduleKey) -> None:
        """Drops a removed Schedule's series."""
        self.schedules.forget(key)
        for labels in self._histograms_of.pop(key, ()):
            self.drop(self.run_duration, *labels)

    # -- serving ------------------------------------------------------------------

    def render(self) -> bytes:
        """``/metrics`` in Prometheus' text format: what ``registry`` holds, each Schedule's series rendered
        straight from its record rather than through prometheus_client's generic formatting."""
        return prometheus_client.generate_latest(self._fixed) + self.schedules.render().encode()

    def track_status(self, writer: sinks.StatusWriter, budget: Budget | None = None) -> None:
        """Registers the status backlog (and the API budget's queue) as gauges read at scrape time."""
        self._fixed.register(_BacklogCollector(writer, budget))

    def track_election(self, elector: election.Elector) -> HaMetrics:
        """Registers the metrics of sharded election and checkpoints."""
        self._fixed.register(_ElectionCollector(elector))
        return HaMetrics(self._fixed)

    def serve(
        self, *, port: int, address: str = "0.0.0.0", readiness: Readiness | None = None
    ) -> http.server.ThreadingHTTPServer:
        """Serves ``/metrics`` (and ``/readyz`` when given ``readiness``) from a background thread; returns the
        server (``shutdown()`` stops it)."""
        server = _MetricsServer((address, port), render=self.render, readiness=readiness)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


class _MetricsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, render: Callable[[], bytes], readiness: Readiness | None) -> None:
        super().__init__(address, _MetricsRequest)
        self.render = render
        self.readiness = readiness


class _MetricsRequest(http.server.BaseHTTPRequestHandler):
    """GET ``/readyz`` answers the readiness (200 or 503, with its reason); any other path the metrics,
    gzipped when asked: Prometheus always asks, and at 100,000 Schedules the text is tens of megabytes.
    Level 1: most of the saving for a fraction of the time."""

    server: _MetricsServer

    def do_GET(self) -> None:
        if self.path == "/readyz" and self.server.readiness is not None:
            ready, why = self.server.readiness()
            self._answer(200 if ready else 503, f"{why}\n".encode(), {"Content-Type": "text/plain"})
            return
        body = self.server.render()
        headers = {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._answer(200, body, headers)

    def _answer(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


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
