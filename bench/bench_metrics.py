"""The operator's /metrics at 10,000 and 100,000 Schedules: size and scrape time, against the old layout.

Each layout is served by a process of its own (as the operator serves it, from
a thread) holding the same realistic state, and scraped from this process as
Prometheus scrapes it (its Accept header, gzip):

- **current**: ``OperatorMetrics`` with its defaults: each Schedule's counters
  and gauges rendered from its record at scrape time, run durations per
  handler and method;
- **per-Schedule histograms**: the same with ``--per-schedule-histograms``;
- **old layout**: what the operator exported before, prometheus_client
  children per Schedule (runs by outcome, Succeeded and Failed made at apply,
  requested runs, a duration histogram, next run, last success, suspended),
  served by ``prometheus_client.start_http_server``. Kept here only as the
  reference the current layout is compared with in the same run.

The state: Schedules in 10 namespaces calling 5 handlers and 3 methods; each
has run 5 times successfully and failed once, every 10th also has a Missed
run, every 50th a run-now, and every 100th is suspended (no next run).

Per layout: the text's size and its size on the wire, the series (and those
per Schedule), the median scrape time of ``--scrapes``, the process's RSS
growth per Schedule and the cost of counting one run (``run_ended``, the
engine's call, timed over 20,000 runs). Goals (issue 26): ≤ 5 series per
Schedule by default, and /metrics at 100,000 Schedules scraped in ≤ 2 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gzip
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

import benchlib
import prometheus_client
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schedulezero_operator import metrics as metrics_
from schedulezero_operator import status
from schedulezero_operator.sinks import ScheduleKey

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus 2.x sends: the old layout (prometheus_client's server) answers it in OpenMetrics."""
LAYOUTS = ("current", "per-schedule", "old")
EVENTS = 20_000
UTC = datetime.UTC


class Layout(Protocol):
    """What the engine tells the metrics, in the words of each layout."""

    def applied(self, key: ScheduleKey, *, suspended: bool) -> None: ...
    def next_run(self, key: ScheduleKey, when: datetime.datetime | None) -> None: ...
    def run_ended(self, key: ScheduleKey, record: status.RunRecord, *, handler: str, method: str) -> None: ...
    def serve(self, port: int) -> None: ...


class Current:
    def __init__(self, *, per_schedule_histograms: bool) -> None:
        self.metrics = metrics_.OperatorMetrics(per_schedule_histograms=per_schedule_histograms)

    def applied(self, key: ScheduleKey, *, suspended: bool) -> None:
        self.metrics.schedule_applied(key, suspended=suspended)

    def next_run(self, key: ScheduleKey, when: datetime.datetime | None) -> None:
        self.metrics.next_run(key, when)

    def run_ended(self, key: ScheduleKey, record: status.RunRecord, *, handler: str, method: str) -> None:
        self.metrics.run_ended(key, record, handler=handler, method=method)

    def serve(self, port: int) -> None:
        self.metrics.serve(port=port, address="127.0.0.1")


class Old:
    """The per-Schedule series as the operator exported them before, with its child cache."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        schedule = ["namespace", "schedule"]
        self.runs = Counter("schedulezero_schedule_runs", "", [*schedule, "outcome"], registry=self.registry)
        self.requested = Counter(
            "schedulezero_schedule_requested_runs", "", [*schedule, "trigger", "outcome"], registry=self.registry
        )
        self.duration = Histogram(
            "schedulezero_schedule_run_duration_seconds",
            "",
            schedule,
            buckets=metrics_.DURATION_BUCKETS,
            registry=self.registry,
        )
        self.next = Gauge("schedulezero_schedule_next_run_timestamp_seconds", "", schedule, registry=self.registry)
        self.success = Gauge(
            "schedulezero_schedule_last_success_timestamp_seconds", "", schedule, registry=self.registry
        )
        self.suspended = Gauge("schedulezero_schedule_suspended", "", schedule, registry=self.registry)
        self.series: Callable[..., Any] = functools.cache(lambda metric, *labels: metric.labels(*labels))
        """``metric.labels(*labels)`` looked up once, as the operator did."""

    def applied(self, key: ScheduleKey, *, suspended: bool) -> None:
        self.series(self.suspended, *key.labels).set(1 if suspended else 0)
        self.series(self.duration, *key.labels)
        for outcome in (status.Outcome.SUCCEEDED, status.Outcome.FAILED):
            self.series(self.runs, *key.labels, str(outcome))

    def next_run(self, key: ScheduleKey, when: datetime.datetime | None) -> None:
        if when is not None:
            self.series(self.next, *key.labels).set(when.timestamp())

    def run_ended(self, key: ScheduleKey, record: status.RunRecord, *, handler: str, method: str) -> None:
        self.series(self.runs, *key.labels, str(record.outcome)).inc()
        if record.trigger != "schedule":
            self.series(self.requested, *key.labels, record.trigger, str(record.outcome)).inc()
        if record.start_time is not None and record.finish_time is not None:
            self.series(self.duration, *key.labels).observe((record.finish_time - record.start_time).total_seconds())
        if record.outcome is status.Outcome.SUCCEEDED and record.finish_time is not None:
            self.series(self.success, *key.labels).set(record.finish_time.timestamp())

    def serve(self, port: int) -> None:
        prometheus_client.start_http_server(port, addr="127.0.0.1", registry=self.registry)


def layout(name: str) -> Layout:
    return Old() if name == "old" else Current(per_schedule_histograms=name == "per-schedule")


def record(outcome: status.Outcome, at: datetime.datetime, *, seconds: float, trigger: str = "schedule") -> Any:
    ran = outcome is not status.Outcome.MISSED
    return status.RunRecord(
        run_id="r",
        scheduled_time=at,
        outcome=outcome,
        start_time=at if ran else None,
        finish_time=at + datetime.timedelta(seconds=seconds) if ran else None,
        trigger=trigger,
    )


def who(index: int) -> tuple[ScheduleKey, str, str]:
    """Schedule number ``index``: its key, its handler and its method."""
    namespace = f"team-{index % 10}"
    method = ("tick", "report", "sync")[index % 3]
    return ScheduleKey(namespace, f"schedule-{index:06d}"), f"{namespace}/handler-{index % 5}", method


def fill(target: Layout, schedules: int) -> None:
    """Every Schedule applied, and its history as in the module's docstring."""
    now = datetime.datetime.now(UTC)
    for index in range(schedules):
        key, handler, method = who(index)
        suspended = index % 100 == 0
        target.applied(key, suspended=suspended)
        target.next_run(key, None if suspended else now + datetime.timedelta(seconds=index % 3600))
        for run in range(5):
            at = now - datetime.timedelta(minutes=10 * (run + 1))
            succeeded = record(status.Outcome.SUCCEEDED, at, seconds=0.01 * (index % 50))
            target.run_ended(key, succeeded, handler=handler, method=method)
        target.run_ended(key, record(status.Outcome.FAILED, now, seconds=2.0), handler=handler, method=method)
        if index % 10 == 0:
            target.run_ended(key, record(status.Outcome.MISSED, now, seconds=0), handler=handler, method=method)
        if index % 50 == 0:
            requested = record(status.Outcome.SUCCEEDED, now, seconds=0.5, trigger="run-now")
            target.run_ended(key, requested, handler=handler, method=method)


def per_event(target: Layout, schedules: int) -> float:
    """µs to count one successful run of an existing Schedule, as ``Engine._finish`` does."""
    finished = record(status.Outcome.SUCCEEDED, datetime.datetime.now(UTC), seconds=0.2)
    calls = [who(index % schedules) for index in range(0, EVENTS * 7919, 7919)]
    started = time.perf_counter()
    for key, handler, method in calls:
        target.run_ended(key, finished, handler=handler, method=method)
    return (time.perf_counter() - started) / len(calls) * 1e6


def serve(name: str, schedules: int, port: int) -> None:
    """The server process: builds the state, reports what it cost, serves until SIGTERM."""
    process = psutil.Process()
    before = process.memory_info().rss
    target = layout(name)
    started = time.perf_counter()
    fill(target, schedules)
    built = time.perf_counter() - started
    grown = process.memory_info().rss - before
    cost = per_event(target, schedules)
    target.serve(port)
    print(f"rss_per_schedule={grown / schedules:.0f} per_event_us={cost:.2f} built_s={built:.1f}")
    print(f"{benchlib.READY_MARKER}{name} {schedules} on {port}", flush=True)
    while True:  # until the benchmark's SIGTERM
        time.sleep(3600)


@dataclasses.dataclass
class Result:
    layout: str
    schedules: int
    text_bytes: int
    wire_bytes: int
    series: int
    per_schedule: float
    scrape_s: list[float]
    rss_per_schedule: float
    per_event_us: float


def scrape(port: int) -> tuple[float, bytes, bytes]:
    """Seconds to the last byte, the body as sent, and the text."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        body = response.read()
        took = time.perf_counter() - started
        zipped = response.headers.get("Content-Encoding") == "gzip"
    return took, body, gzip.decompress(body) if zipped else body


def measure(name: str, schedules: int, scrapes: int) -> Result:
    port = benchlib.free_port()
    argv = [benchlib.PYTHON, __file__, "--serve", name, str(schedules), str(port)]
    with benchlib.serving(f"{name}-{schedules}", argv, timeout=3600) as server:
        [line] = [line for line in server.output().splitlines() if line.startswith("rss_per_schedule=")]
        facts = dict(part.split("=") for part in line.split())
        times, body, text = [], b"", b""
        for _ in range(scrapes):
            took, body, text = scrape(port)
            times.append(took)
    lines = [line for line in text.split(b"\n") if line and not line.startswith(b"#")]
    own = sum(1 for line in lines if b'schedule="' in line)
    return Result(
        name,
        schedules,
        len(text),
        len(body),
        len(lines),
        own / schedules,
        times,
        float(facts["rss_per_schedule"]),
        float(facts["per_event_us"]),
    )


def table(results: list[Result]) -> str:
    rows = []
    for result in results:
        peer = next((r for r in results if r.layout == "old" and r.schedules == result.schedules), None)
        ratio = f"{benchlib.median(result.scrape_s) / benchlib.median(peer.scrape_s):.3f}x" if peer else "—"
        rows.append(
            [
                f"{result.schedules:,}",
                result.layout,
                f"{result.series:,}",
                f"{result.per_schedule:.2f}",
                f"{result.text_bytes / 2**20:.1f} MiB / {result.wire_bytes / 2**20:.1f} MiB",
                f"{benchlib.median(result.scrape_s):.3f} s ({min(result.scrape_s):.3f}-{max(result.scrape_s):.3f})",
                ratio,
                f"{result.rss_per_schedule / 1024:.2f} KiB",
                f"{result.per_event_us:.1f} µs",
            ]
        )
    headers = ["Schedules", "layout", "series", "per Schedule", "text / gzip", "scrape (min-max)", "vs old",
               "RSS per Schedule", "count a run"]  # fmt: skip
    return benchlib.markdown_table(headers, rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="Schedules per run")
    parser.add_argument("--scrapes", type=int, default=5, help="scrapes per layout and size (median shown)")
    parser.add_argument(
        "--old-up-to", type=int, default=10_000, help="the largest size the old layout is measured at (slow)"
    )
    parser.add_argument("--per-schedule-up-to", type=int, default=10_000, help="likewise for per-Schedule histograms")
    parser.add_argument("--serve", nargs=3, metavar=("LAYOUT", "SCHEDULES", "PORT"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return
    benchlib.stop_on_sigterm()
    print(benchlib.environment("prometheus_client"))
    limits: dict[str, Callable[[int], bool]] = {
        "current": lambda size: True,
        "per-schedule": lambda size: size <= args.per_schedule_up_to,
        "old": lambda size: size <= args.old_up_to,
    }
    results = []
    for size in args.sizes:
        for name in LAYOUTS:
            if limits[name](size):
                print(f"  {name} at {size:,} ...", flush=True)
                results.append(measure(name, size, args.scrapes))
    print()
    print(table(results))
    print()
    for result in results:
        if result.layout == "current":
            print(
                f"{result.schedules:,}: {result.per_schedule:.2f} series per Schedule (goal ≤ 5: "
                f"{benchlib.verdict(result.per_schedule <= 5)})"
                + (
                    f"; scraped in {benchlib.median(result.scrape_s):.2f} s (goal ≤ 2 s at 100,000: "
                    f"{benchlib.verdict(benchlib.median(result.scrape_s) <= 2)})"
                    if result.schedules >= 100_000
                    else ""
                )
            )


if __name__ == "__main__":
    sys.exit(main())
