"""The operator's API budget: one token bucket for every request it makes besides its watches.

The API server and etcd serve the whole cluster, so a controller keeps to a
client-side rate however much work it has (client-go calls it QPS and burst).
Ours is shared by Schedule and Handler status, Events and checkpoints (the
election's Leases run on a thread of their own, outside it: see
``election_thread``), so the operator's load on the API server is bounded by ``qps`` whatever the
number of Schedules: what grows with them is how stale a status may get, which
the status writer reports.

Checkpoints come first. A checkpoint written late makes a failover run again
what already ran, so a checkpoint write never waits behind a backlog of
status writes: it is served before them as soon as a token is there, that is
within ``1 / qps`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import time
from collections.abc import Awaitable, Callable


class Priority(enum.IntEnum):
    """Who is served first when tokens are short; lower values first."""

    ELECTION = 0
    """Checkpoints (and any election request given the budget): late, they cost a run twice."""
    STATUS = 1
    """Status writes and Events: late, they are stale for a while."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BudgetSettings:
    """The budget of ``schedulezero operator --kube-api-qps --kube-api-burst``."""

    qps: float = 20.0
    """Requests per second, sustained. kube-controller-manager, which runs CronJob, uses 20."""
    burst: int = 40
    """Requests that may go at once after a quiet spell."""

    def __post_init__(self) -> None:
        if self.qps <= 0:
            raise ValueError(f"the API budget's qps must be positive, not {self.qps}")
        if self.burst < 1:
            raise ValueError(f"the API budget's burst must be at least 1, not {self.burst}")


class Budget:
    """A token bucket whose waiters are served by priority, then in order of arrival.

    ``clock`` and ``sleep`` are replaceable so that tests can run it on a
    clock of their own.
    """

    def __init__(
        self,
        settings: BudgetSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_grant: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or BudgetSettings()
        self._clock = clock
        self._sleep = sleep
        self._on_grant = on_grant
        self._tokens = float(self.settings.burst)
        self._stamp = clock()
        self._waiters = {priority: collections.deque[asyncio.Future[None]]() for priority in Priority}
        self._dispatcher: asyncio.Task[None] | None = None
        self.granted: collections.Counter[str] = collections.Counter()
        """Requests let through, by kind."""

    @property
    def waiting(self) -> int:
        """Requests waiting for a token now."""
        return sum(len(queue) for queue in self._waiters.values())

    async def acquire(self, kind: str, *, priority: Priority = Priority.STATUS) -> None:
        """Waits for a token; ``kind`` (e.g. "schedule-status", "checkpoint") is what the metrics count."""
        self._refill()
        ahead = any(self._waiters[p] for p in Priority if p <= priority)
        if not ahead and self._tokens >= 1:
            self._tokens -= 1
        else:
            future = asyncio.get_running_loop().create_future()
            self._waiters[priority].append(future)
            if self._dispatcher is None or self._dispatcher.done():
                self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # granted, then given up: the token goes back
                    self._tokens += 1
                else:
                    with contextlib.suppress(ValueError):  # already skipped by the dispatcher
                        self._waiters[priority].remove(future)
                raise
        self.granted[kind] += 1
        if self._on_grant is not None:
            self._on_grant(kind)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.settings.burst), self._tokens + (now - self._stamp) * self.settings.qps)
        self._stamp = now

    async def _dispatch(self) -> None:
        while True:
            self._refill()
            while self._tokens >= 1:
                future = self._next()
                if future is None:
                    return
                self._tokens -= 1
                future.set_result(None)
            if self.waiting == 0:
                return
            # Not less than a millisecond: a float a hair under 1 must not spin the loop.
            await self._sleep(max(0.001, (1 - self._tokens) / self.settings.qps))

    def _next(self) -> asyncio.Future[None] | None:
        for priority in Priority:
            queue = self._waiters[priority]
            while queue:
                future = queue.popleft()
                if not future.done():
                    return future
        return None
