"""Replies kept by call id, so a retried call gets its first answer instead of running again.

Delivery is at-least-once (a caller retries after a lost reply, an operator
re-fires after a crash); keeping replies makes execution exactly-once for as
long as they are kept. Every entry lives for the same time, so insertion order
is expiry order and eviction only ever looks at the oldest entries.
"""

from __future__ import annotations

import collections
import time


class ReplyCache:
    """Finished replies by call id, bounded in age (``ttl`` seconds) and in count."""

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[bytes, tuple[float, list[bytes]]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, call_id: bytes) -> list[bytes] | None:
        entry = self._entries.get(call_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, call_id: bytes, frames: list[bytes]) -> None:
        now = time.monotonic()
        self._entries.pop(call_id, None)
        self._entries[call_id] = (now + self.ttl, frames)
        while self._entries:
            oldest_id, (expires, _) = next(iter(self._entries.items()))
            if expires >= now and len(self._entries) <= self.max_entries:
                break
            del self._entries[oldest_id]
