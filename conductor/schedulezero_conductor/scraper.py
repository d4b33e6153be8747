"""Scraping ``sys.metrics`` from every handler in parallel, on an interval, into a cache.

``/metrics`` and ``collect_metrics`` read the cache, so a Prometheus scrape
costs nothing more than formatting, however many handlers there are and
however slow some of them answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from schedulezero_conductor import discovery as discovery_
from schedulezero_handler import client as client_
from schedulezero_handler import errors

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The latest scrape of one handler (or one pod of a handler with replicas)."""

    name: str
    endpoint: str
    up: bool
    metrics: dict[str, Any]
    """``sys.metrics`` as returned; empty when unreachable."""
    scraped_at: float
    cpu_percent: float | None = None
    """CPU use since the previous scrape, in percent of one core."""
    error: str | None = None
    pod: str = ""
    """The pod, for a handler scraped pod by pod."""


class Scraper:
    def __init__(
        self,
        client: client_.Client,
        discovery: discovery_.Discovery,
        *,
        interval: float = 15.0,
        timeout: float = 5.0,
        on_round: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.discovery = discovery
        self.interval = interval
        self.timeout = timeout
        self.on_round = on_round
        """Awaited after every round (the conductor renders /metrics then)."""
        self.cache: dict[discovery_.Target, Snapshot] = {}
        self.last_round_seconds: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.scrape()
                if self.on_round is not None:
                    await self.on_round()
            except Exception:
                log.exception("scrape round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def scrape(self) -> None:
        """One round: every current target at once, each bounded by the timeout."""
        started = time.monotonic()
        targets = await self.discovery.targets()
        addresses = {target.endpoint for target in targets}
        for gone in self.cache.keys() - set(targets):
            endpoint = self.cache.pop(gone).endpoint
            if endpoint not in addresses:
                self.client.retire(endpoint)
        curves = await self.discovery.curves()
        for endpoint in addresses:  # reconnects only where the keys changed
            await self.client.set_curve(endpoint, curves.get(endpoint))
        snapshots = await asyncio.gather(*(self._scrape_one(target) for target in targets))
        self.cache = dict(zip(targets, snapshots, strict=True))
        self.last_round_seconds = time.monotonic() - started

    async def _scrape_one(self, target: discovery_.Target) -> Snapshot:
        now = time.monotonic()
        name, endpoint, pod = target.handler, target.endpoint, target.pod
        try:
            metrics = await self.client.call(endpoint, "sys.metrics", timeout=self.timeout)
        except errors.CallError as error:
            return Snapshot(name, endpoint, up=False, metrics={}, scraped_at=now, error=str(error), pod=pod)
        previous = self.cache.get(target)
        cpu_percent = None
        if previous is not None and previous.up:
            elapsed = now - previous.scraped_at
            used = float(metrics.get("cpu_seconds", 0.0)) - float(previous.metrics.get("cpu_seconds", 0.0))
            if elapsed > 0 and used >= 0:
                cpu_percent = round(100.0 * used / elapsed, 2)
        return Snapshot(name, endpoint, up=True, metrics=metrics, scraped_at=now, cpu_percent=cpu_percent, pod=pod)
