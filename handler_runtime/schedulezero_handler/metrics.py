"""What ``sys.metrics`` reports: the process as psutil sees it, and the calls it served.

The conductor turns these into Prometheus series, so values are in base units
(seconds, bytes) and counters only ever grow.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any

import psutil


class CallStats:
    """Calls by method and outcome (``ok`` or an error type), and calls in flight."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.in_flight = 0
        self.dropped_messages = 0
        """Messages dropped unanswered: malformed envelopes, oversized, undeliverable replies."""
        self.duplicates: collections.Counter[str] = collections.Counter()
        """Calls by method that arrived for a call id already run or running, answered without running
        the method again: second deliveries, which only the reply cache kept from running twice."""

    def finished(self, method: str, outcome: str) -> None:
        self.counts[method, outcome] += 1

    def by_method(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for (method, outcome), count in sorted(self.counts.items()):
            table.setdefault(method, {})[outcome] = count
        return table


class ProcessMetrics:
    """Resource use of this process."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.start_time = self._process.create_time()

    def snapshot(self) -> dict[str, Any]:
        process = self._process
        with process.oneshot():
            cpu = process.cpu_times()
            metrics: dict[str, Any] = {
                "cpu_seconds": cpu.user + cpu.system,
                "resident_memory_bytes": process.memory_info().rss,
                "threads": process.num_threads(),
                "start_time_seconds": self.start_time,
                "uptime_seconds": max(0.0, time.time() - self.start_time),
            }
            metrics["open_fds"] = None
            with contextlib.suppress(AttributeError, psutil.Error):  # num_fds is POSIX-only
                metrics["open_fds"] = process.num_fds()
        return metrics
