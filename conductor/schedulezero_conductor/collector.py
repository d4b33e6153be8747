"""``/metrics`` from the scrape cache, through a custom prometheus_client Collector.

Series are built fresh on every Prometheus scrape from the latest snapshot of
each handler, so a handler that is removed simply stops appearing, with no
stale children to clean up.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from schedulezero_conductor.scraper import Scraper

PROCESS = ["handler", "pod"]
"""A handler's labels: the pod is empty for a handler without replicas, and Prometheus then drops it."""


class HandlerCollector(Collector):
    def __init__(self, scraper: Scraper) -> None:
        self._scraper = scraper

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snapshots = list(self._scraper.cache.values())
        up = GaugeMetricFamily(
            "schedulezero_handler_up", "1 if the handler answered the last scrape.", labels=[*PROCESS, "endpoint"]
        )
        sleeping = GaugeMetricFamily("schedulezero_handler_sleeping", "1 while the handler sleeps.", labels=PROCESS)
        cpu = CounterMetricFamily(
            "schedulezero_handler_cpu_seconds", "CPU time the handler process used.", labels=PROCESS
        )
        memory = GaugeMetricFamily(
            "schedulezero_handler_resident_memory_bytes", "Resident memory of the handler process.", labels=PROCESS
        )
        calls = CounterMetricFamily(
            "schedulezero_handler_calls",
            "Calls served, by method and outcome.",
            labels=[*PROCESS, "method", "outcome"],
        )
        duplicates = CounterMetricFamily(
            "schedulezero_handler_duplicate_calls",
            "Calls that arrived for a call id already run or running, answered without running the method again.",
            labels=[*PROCESS, "method"],
        )
        in_flight = GaugeMetricFamily(
            "schedulezero_handler_calls_in_flight", "Calls running in the handler.", labels=PROCESS
        )
        started = GaugeMetricFamily(
            "schedulezero_handler_start_time_seconds",
            "Start time of the handler process (Unix time).",
            labels=PROCESS,
        )
        for snapshot in snapshots:
            metrics = snapshot.metrics
            process = [snapshot.name, snapshot.pod]
            up.add_metric([*process, snapshot.endpoint], 1.0 if snapshot.up else 0.0)
            if not snapshot.up:
                continue
            sleeping.add_metric(process, 1.0 if metrics.get("state") == "sleeping" else 0.0)
            cpu.add_metric(process, float(metrics.get("cpu_seconds", 0.0)))
            memory.add_metric(process, float(metrics.get("resident_memory_bytes", 0)))
            in_flight.add_metric(process, float(metrics.get("in_flight", 0)))
            started.add_metric(process, float(metrics.get("start_time_seconds", 0.0)))
            for method, outcomes in (metrics.get("calls") or {}).items():
                for outcome, count in outcomes.items():
                    calls.add_metric([*process, method, outcome], float(count))
            for method, count in (metrics.get("duplicate_calls") or {}).items():
                duplicates.add_metric([*process, method], float(count))
        yield from (up, sleeping, cpu, memory, calls, duplicates, in_flight, started)
        duration = GaugeMetricFamily(
            "schedulezero_conductor_scrape_duration_seconds", "Duration of the last round of scraping every handler."
        )
        if self._scraper.last_round_seconds is not None:
            duration.add_metric([], self._scraper.last_round_seconds)
        yield duration
