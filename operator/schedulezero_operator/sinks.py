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

from schedulezero_operator.budget import Budget

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, order=True)
class ScheduleKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def labels(self) -> tuple[str, str]:
        """The values of the ``namespace`` and ``schedule`` labels of its metrics."""
        return self.namespace, self.name


class WriteConflict(Exception):
    """A status write refused because the object changed since the version it was written against."""


class StatusSink(Protocol):
    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        """Persists a Schedule's whole status; raising means "try again later"."""


class EventSink(Protocol):
    def event(self, key: ScheduleKey, *, warning: bool, reason: str, message: str) -> None:
        """Reports something a user should see (Kubernetes Event, terminal line); must not block."""


class RunObserver(Protocol):
    def run_finished(self, key: ScheduleKey, run: dict[str, Any]) -> None:
        """Told of every run as it ends (the terminal view of local mode); must not block."""


@dataclasses.dataclass(frozen=True)
class _Change:
    sequence: int
    """Of its entry in the due heap; an entry whose sequence no longer matches is stale."""
    since: float
    """When the change was first marked, on the writer's clock."""


class StatusWriter:
    """Writes each Schedule's status after it changes: coalesced, paced, oldest first.

    A change waits ``settle`` seconds, and at least ``interval`` after the
    Schedule's previous write; every further change rides on the same write,
    rendered when it is sent. So a run that starts and ends within ``settle``
    costs one write, and a Schedule firing every second one write per interval.

    With a ``budget``, every write takes a token, and the Schedules whose
    changes are due are written in the order they became due: under a backlog
    every status converges with its latest state and none starves, while
    ``backlog()`` says how long the oldest change has waited.

    A Schedule has at most one write in flight, so a status rendered earlier
    never overwrites a newer one.
    """

    def __init__(
        self,
        sink: StatusSink,
        render: Callable[[ScheduleKey], dict[str, Any] | None],
        *,
        interval: float = 2.0,
        settle: float = 0.0,
        budget: Budget | None = None,
        concurrency: int = 16,
        on_write: Callable[[], None] | None = None,
        written: Callable[[ScheduleKey], None] | None = None,
    ) -> None:
        self._sink = sink
        self._render = render
        self._interval = interval
        self._settle = min(settle, interval)
        self._budget = budget
        self._on_write = on_write
        self._written = written
        """Told of each successful write, after it: what the status it rendered carried is written."""
        self._last_write: dict[ScheduleKey, float] = {}
        self._due: list[tuple[float, int, ScheduleKey]] = []
        self._pending: dict[ScheduleKey, _Change] = {}
        self._deferred: set[ScheduleKey] = set()
        """Pending, with their heap entry taken out while a write of theirs was in flight."""
        self._sequence = itertools.count()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._token = False
        """A token taken from the budget and not spent yet."""
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._writing: set[ScheduleKey] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, *, flush: bool = True) -> None:
        """Stops, writing what is still pending first unless told not to.

        The flush does not wait for the budget: it is one write per Schedule
        with a change not yet written, and each holds run records that
        nothing else keeps.
        """
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _ in range(3 if flush else 0):  # a Schedule with a write in flight gets its latest state after it
            await asyncio.gather(*self._writes, return_exceptions=True)
            if not self._pending:
                break
            await asyncio.gather(*(self._flush(key) for key in list(self._pending)), return_exceptions=True)
        await asyncio.gather(*self._writes, return_exceptions=True)

    async def write_now(self, keys: list[ScheduleKey]) -> None:
        """Writes these Schedules' pending changes now, outside the budget (a stopped writer too)."""
        await asyncio.gather(*(self._flush(key) for key in keys if key in self._pending), return_exceptions=True)

    def mark(self, key: ScheduleKey) -> None:
        """The Schedule's status changed."""
        if key in self._pending:
            return
        now = time.monotonic()
        self._queue(key, since=now, due=max(now + self._settle, self._last_write.get(key, 0.0) + self._interval))

    def forget(self, key: ScheduleKey) -> None:
        """The Schedule is gone: nothing more to write."""
        self._pending.pop(key, None)  # its entry in _due no longer matches: skipped when due
        self._deferred.discard(key)
        self._last_write.pop(key, None)

    def backlog(self) -> tuple[int, float]:
        """Schedules with a change not yet written, and the age in seconds of the oldest change.

        Called from the metrics server's thread while the loop changes the backlog: it iterates a copy (one
        step under the GIL), since iterating the dictionary itself fails once a change lands meanwhile.
        """
        changes = list(self._pending.values())
        if not changes:
            return 0, 0.0
        return len(changes), time.monotonic() - min(change.since for change in changes)

    def _queue(self, key: ScheduleKey, *, since: float, due: float) -> None:
        sequence = next(self._sequence)
        self._pending[key] = _Change(sequence, since)
        heapq.heappush(self._due, (due, sequence, key))
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            wait = self._until_due()
            if wait != 0.0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation of stop().
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wakeup.wait()
                continue
            await self._slots.acquire()
            try:
                if self._budget is not None and not self._token:
                    await self._budget.acquire("schedule-status")
                    self._token = True
                key = self._pop_due()  # after the wait for a token: the oldest due then
            except BaseException:
                self._slots.release()
                raise
            if key is None:  # the token is kept for the next one
                self._slots.release()
                continue
            self._token = False
            task = asyncio.get_running_loop().create_task(self._write(key))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    def _until_due(self) -> float | None:
        """Seconds until the next write is due (0.0: now), dropping stale entries; None: nothing pending."""
        while self._due:
            due, sequence, key = self._due[0]
            change = self._pending.get(key)
            if change is None or change.sequence != sequence:
                heapq.heappop(self._due)
                continue
            return max(0.0, due - time.monotonic())
        return None

    def _pop_due(self) -> ScheduleKey | None:
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, sequence, key = heapq.heappop(self._due)
            change = self._pending.get(key)
            if change is None or change.sequence != sequence:
                continue
            if key in self._writing:  # queued again when that write ends, with the latest state
                self._deferred.add(key)
                continue
            return key
        return None

    async def _write(self, key: ScheduleKey) -> None:
        self._writing.add(key)
        try:
            await self._send(key)
        finally:
            self._writing.discard(key)
            self._slots.release()
            if key in self._deferred:
                self._deferred.discard(key)
                change = self._pending.get(key)
                if change is not None:
                    self._queue(key, since=change.since, due=self._last_write.get(key, 0.0) + self._interval)

    async def _flush(self, key: ScheduleKey) -> None:
        async with self._slots:
            await self._send(key)

    async def _send(self, key: ScheduleKey) -> None:
        change = self._pending.pop(key, None)
        if change is None:
            return  # forgotten meanwhile
        status = self._render(key)  # now, not when marked: the latest state
        if status is None:
            return
        self._last_write[key] = time.monotonic()
        try:
            await self._sink.write_status(key, status)
        except Exception as error:
            # A conflict is routine (a spec edited meanwhile, a newer version still on its way through the
            # watch); any other failure is worth a warning.
            level = logging.DEBUG if isinstance(error, WriteConflict) else logging.WARNING
            log.log(level, "status of %s not written (%s); retrying", key, error)
            if key not in self._pending:
                self._queue(key, since=change.since, due=time.monotonic() + self._interval)
            return
        if self._written is not None:
            self._written(key)
        if self._on_write is not None:
            self._on_write()
