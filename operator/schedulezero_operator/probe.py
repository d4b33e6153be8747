"""Probing handlers: are they reachable, awake, and which methods do they expose?

``sys.health`` and ``sys.describe`` are system verbs, so a probe neither wakes
a sleeping handler nor keeps it awake.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Callable, Sequence
from typing import Any

from schedulezero_handler import client as client_
from schedulezero_handler import errors

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    endpoint: str
    state: str
    """Active, Sleeping or Unreachable."""
    seen: datetime.datetime | None = None
    version: str | None = None
    methods: tuple[str, ...] | None = None
    described: tuple[dict[str, Any], ...] = ()
    error: str | None = None


async def probe(client: client_.Client, endpoint: str, *, timeout: float = 5.0) -> ProbeResult:
    try:
        health = await client.call(endpoint, "sys.health", timeout=timeout)
        described = await client.call(endpoint, "sys.describe", timeout=timeout)
    except errors.CallError as error:
        return ProbeResult(endpoint, "Unreachable", error=str(error))
    methods = tuple(m for m in described.get("methods", []) if isinstance(m, dict) and isinstance(m.get("name"), str))
    return ProbeResult(
        endpoint,
        "Sleeping" if health.get("state") == "sleeping" else "Active",
        seen=datetime.datetime.now(datetime.UTC),
        version=str(described.get("version") or health.get("version") or ""),
        methods=tuple(m["name"] for m in methods),
        described=methods,
    )


class Prober:
    """Probes every replica of every watched Handler on an interval, and at once when one changes.

    A Handler is probed as a whole: each round asks all its replicas at once and
    reports their results together. ``poke`` brings a round forward, for a sign
    that something changed (a connection lost or made) before the interval ends.
    """

    def __init__(
        self,
        client: client_.Client,
        *,
        interval: float,
        on_result: Callable[[str, list[ProbeResult]], None],
        timeout: float = 5.0,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self._client = client
        self._owns = owns
        """Whether this replica probes a Handler (``namespace/name``) now: its shard's owner does."""
        self._interval = interval
        self._timeout = timeout
        self._on_result = on_result
        self._endpoints: dict[str, tuple[str, ...]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._running = False

    def start(self) -> None:
        self._running = True
        for name in self._endpoints:
            self._launch(name)

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def watch(self, name: str, endpoints: Sequence[str]) -> None:
        """Probes ``endpoints`` (a Handler's replicas) from now on; the same set again changes nothing."""
        endpoints = tuple(endpoints)
        if self._endpoints.get(name) == endpoints and name in self._tasks:
            return
        self._endpoints[name] = endpoints
        self._cancel(name)
        if self._running:
            self._launch(name)

    def forget(self, name: str) -> None:
        self._endpoints.pop(name, None)
        self._cancel(name)

    def poke(self, endpoint: str) -> None:
        """Probes the Handlers that have ``endpoint`` among their replicas now, not at their next round."""
        for name, endpoints in self._endpoints.items():
            if endpoint in endpoints and name in self._wakes:
                self._wakes[name].set()

    def _cancel(self, name: str) -> None:
        self._wakes.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def _launch(self, name: str) -> None:
        self._wakes[name] = wake = asyncio.Event()
        self._tasks[name] = asyncio.get_running_loop().create_task(self._loop(name, self._endpoints[name], wake))

    async def _loop(self, name: str, endpoints: tuple[str, ...], wake: asyncio.Event) -> None:
        while True:
            if self._owns is not None and not self._owns(name):
                await asyncio.sleep(min(self._interval, 1.0))  # taken over soon after its shard is
                continue
            wake.clear()
            results = await asyncio.gather(*(probe(self._client, e, timeout=self._timeout) for e in endpoints))
            try:
                self._on_result(name, list(results))
            except Exception:
                log.exception("handling the probe of %s failed", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._interval)
