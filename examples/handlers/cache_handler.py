"""The reference handler for sleep: a large in-memory cache, dropped when idle.

``on_start`` and ``on_wake`` build the cache (``cache_entries`` in the config,
default 500,000 entries, a few hundred MB); ``on_sleep`` drops it, after which
the runtime collects garbage and trims the C heap so the memory really goes
back to the operating system.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from schedulezero_handler import Handler, expose


class CacheHandler(Handler):
    version = "1.0.0"

    async def on_start(self) -> None:
        self.cache: dict[str, dict[str, Any]] = {}
        self.last_wake_seconds: float | None = None
        await asyncio.to_thread(self._build)

    async def on_sleep(self) -> None:
        self.cache = {}

    async def on_wake(self) -> None:
        # Seconds of CPU work: in a thread, so health probes and sys.* verbs are answered meanwhile.
        started = time.perf_counter()
        await asyncio.to_thread(self._build)
        self.last_wake_seconds = time.perf_counter() - started

    def _build(self) -> None:
        entries = int(self.config.get("cache_entries", 500_000))
        self.cache = {
            f"customer-{i}": {"id": i, "name": f"Customer {i}", "notes": f"note {i} " * 20, "tags": [i % 7, i % 11]}
            for i in range(entries)
        }

    @expose
    def lookup(self, key: str) -> dict[str, Any] | None:
        """One cached record, or null."""
        return self.cache.get(key)

    @expose
    def last_wake_ms(self) -> float | None:
        """How long the last ``on_wake`` took, timed here: what a first call after sleep waits for."""
        return None if self.last_wake_seconds is None else self.last_wake_seconds * 1000

    @expose
    def size(self) -> int:
        """Entries in the cache (0 while asleep)."""
        return len(self.cache)
