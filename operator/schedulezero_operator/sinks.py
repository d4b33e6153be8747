"""Where the engine's output goes: status writes (coalesced) and events.

The engine does not know about Kubernetes. The kopf operator writes status
through the status subresource and posts Events; local mode keeps status in a
state file and prints runs. Both implement these two small protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, order=True)
class ScheduleKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class StatusSink(Protocol):
    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        """Persists a Schedule's whole status; raising means "try again later"."""


class EventSink(Protocol):
    def event(self, key: ScheduleKey, *, warning: bool, reason: str, message: str) -> None:
        """Reports something a user should see (Kubernetes Event, terminal line); must not block."""


class RunObserver(Protocol):
    def run_finished(self, key: ScheduleKey, run: dict[str, Any]) -> None:
        """Told of every run as it ends (the terminal view of local mode); must not block."""


class StatusWriter:
    """Coalesces status writes: at most one per Schedule every ``interval`` seconds.

    A change is written promptly when the Schedule's last write is older than
    the interval, else when the interval has passed; the status rendered is the
    latest at write time. So a run's start and end reach the status of a
    slow schedule, while a fast one costs one write per interval however often
    it fires.

    A status is rendered only once a write can be sent, and a Schedule has at
    most one write in flight: under load writes wait for a slot, and one
    rendered earlier and sent later would overwrite a newer status.
    """

    def __init__(
        self,
        sink: StatusSink,
        render: Callable[[ScheduleKey], dict[str, Any] | None],
        *,
        interval: float = 2.0,
        concurrency: int = 16,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        self._sink = sink
        self._render = render
        self._interval = interval
        self._on_write = on_write
        self._last_write: dict[ScheduleKey, float] = {}
        self._due: list[tuple[float, int, ScheduleKey]] = []
        self._pending: dict[ScheduleKey, int] = {}
        """Schedules waiting for a write, with the sequence number of their entry in ``_due``."""
        self._sequence = itertools.count()
        self._wakeup = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._writing: set[ScheduleKey] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, *, flush: bool = True) -> None:
        """Stops, writing what is still pending first unless told not to."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _ in range(3 if flush else 0):  # a Schedule with a write in flight gets its latest state after it
            await asyncio.gather(*self._writes, return_exceptions=True)
            if not self._pending:
                break
            await asyncio.gather(*(self._write(key) for key in list(self._pending)), return_exceptions=True)
        await asyncio.gather(*self._writes, return_exceptions=True)

    def mark(self, key: ScheduleKey) -> None:
        """The Schedule's status changed."""
        if key in self._pending:
            return
        sequence = next(self._sequence)
        self._pending[key] = sequence
        due = max(time.monotonic(), self._last_write.get(key, 0.0) + self._interval)
        heapq.heappush(self._due, (due, sequence, key))
        self._wakeup.set()

    def forget(self, key: ScheduleKey) -> None:
        """The Schedule is gone: nothing more to write."""
        self._pending.pop(key, None)  # its entry in _due no longer matches: skipped when due
        self._last_write.pop(key, None)

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _, sequence, key = heapq.heappop(self._due)
                if self._pending.get(key) == sequence:  # not forgotten (and re-marked) since
                    task = asyncio.get_running_loop().create_task(self._write(key))
                    self._writes.add(task)
                    task.add_done_callback(self._writes.discard)
            timeout = self._due[0][0] - now if self._due else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation of stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def _write(self, key: ScheduleKey) -> None:
        if key in self._writing:  # its write in flight goes first; this one follows with the latest state
            self._pending.pop(key, None)
            self.mark(key)
            return
        self._writing.add(key)
        try:
            async with self._limit:
                if self._pending.pop(key, None) is None:
                    return  # forgotten while waiting for a slot
                status = self._render(key)  # now, not when marked: the latest state
                if status is None:
                    return
                self._last_write[key] = time.monotonic()
                try:
                    await self._sink.write_status(key, status)
                except Exception as error:
                    log.warning("status of %s not written (%s); retrying", key, error)
                    self.mark(key)
                    return
        finally:
            self._writing.discard(key)
        if self._on_write is not None:
            self._on_write()
