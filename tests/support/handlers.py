"""Handlers used by the integration tests, served as real processes."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import threading
import time
from typing import Any

from schedulezero_handler import Handler, current_call, expose


class ProbeHandler(Handler):
    """Counts executions and records hook order, so tests can see what really ran."""

    version = "9.9.9"

    async def on_start(self) -> None:
        self.executions: collections.Counter[str] = collections.Counter()
        self.events: list[str] = ["start"]
        self.ballast = b""
        self.ticks: list[dict[str, Any]] = []
        self.failures: collections.Counter[str] = collections.Counter()
        self.threads = threading.Lock()
        self.in_threads: collections.Counter[str] = collections.Counter()

    async def on_sleep(self) -> None:
        self.events.append("sleep")
        self.ballast = b""

    async def on_wake(self) -> None:
        self.events.append("wake")

    @expose
    async def echo(self, value: Any = None) -> Any:
        """Returns what it was given."""
        self.executions["echo"] += 1
        self.events.append("echo")
        return value

    @expose
    def add(self, a: int, b: int = 0) -> int:
        """Sync: runs in a worker thread."""
        self.executions["add"] += 1
        return a + b

    @expose
    def thread_name(self) -> bool:
        """True when called off the event loop's thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return True
        return False

    @expose
    async def slow(self, seconds: float, key: str = "") -> str:
        """Sleeps, counting starts and completions per key."""
        self.executions[f"slow-start:{key}"] += 1
        await asyncio.sleep(seconds)
        self.executions[f"slow-done:{key}"] += 1
        return key

    @expose
    def slow_sync(self, seconds: float, key: str = "") -> float:
        """Sleeps in its thread, counting starts per key and the most running at once."""
        with self.threads:
            self.executions[f"sync-start:{key}"] += 1
            self.in_threads[key] += 1
            self.executions[f"sync-most:{key}"] = max(self.executions[f"sync-most:{key}"], self.in_threads[key])
        time.sleep(seconds)
        with self.threads:
            self.in_threads[key] -= 1
        return seconds

    @expose
    async def blob(self, size: int) -> str:
        """A result of ``size`` characters."""
        return "x" * size

    @expose
    async def block_loop(self, seconds: float) -> None:
        """A badly written async method that blocks the event loop."""
        time.sleep(seconds)  # noqa: ASYNC251  (on purpose)

    @expose
    async def fail(self, message: str) -> None:
        raise ValueError(message)

    @expose
    async def bad_result(self) -> Any:
        return {1, 2, 3}

    @expose
    async def tick(self, seconds: float = 0.0, failures: int = 0) -> str | None:
        """Records the run it serves (run id, nominal time, attempt); optionally takes a while, and fails
        the first ``failures`` attempts of each run.

        With ``PROBE_JOURNAL`` set, each execution's start and end are also appended to that file, so a
        test still knows what a handler ran after killing it."""
        call = current_call()
        assert call is not None
        tick = {
            "run": call.call_id,
            "scheduled": call.scheduled_time,
            "attempt": call.attempt,
            "schedule": call.schedule,
        }
        self.ticks.append({**tick, "at": time.time()})
        self._journal({**tick, "event": "start"})
        if seconds:
            await asyncio.sleep(seconds)
        if call.attempt <= failures:
            self._journal({**tick, "event": "failed"})
            raise RuntimeError(f"attempt {call.attempt} fails on purpose")
        self._journal({**tick, "event": "done"})
        return call.scheduled_time

    def _journal(self, entry: dict[str, Any]) -> None:
        path = os.environ.get("PROBE_JOURNAL")
        if path:
            with open(path, "a") as journal:
                journal.write(json.dumps({**entry, "at": time.time()}) + "\n")

    @expose
    def sync_call_info(self) -> str | None:
        call = current_call()
        return call.call_id if call is not None else None

    @expose
    async def ticks_seen(self) -> list[dict[str, Any]]:
        return list(self.ticks)

    @expose
    async def flaky(self, key: str, failures: int) -> int:
        """Fails the first ``failures`` calls for ``key``; returns the attempt that succeeded."""
        self.failures[key] += 1
        if self.failures[key] <= failures:
            raise RuntimeError(f"failure {self.failures[key]} of {failures}")
        call = current_call()
        return call.attempt if call is not None else 0

    @expose
    async def counts(self) -> dict[str, int]:
        return dict(self.executions)

    @expose
    async def history(self) -> list[str]:
        return list(self.events)

    @expose
    async def pid(self) -> int:
        return os.getpid()

    def helper(self) -> str:
        """Public but not exposed."""
        return "secret"
