"""Replies kept by call id, so a retried call gets its first answer instead of running again.

Delivery is at-least-once (a caller resends after a lost reply, an operator
re-fires after a crash); keeping replies makes execution exactly-once for as
long as they are kept. A failed call is different: a caller's next *attempt*
(a higher attempt number) asks for it to run again, while a resend of the same
attempt still gets the stored error. Every entry lives for the same time, so
insertion order is expiry order and expiry only looks at the oldest entries.

The cache is bounded in bytes too, since any caller chooses how large its
replies are: past the bound the largest replies go first, which frees the most
memory while keeping the dedup of the many ordinary calls.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import time

from schedulezero_handler import protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    frames: list[bytes]
    attempt: int

    @property
    def succeeded(self) -> bool:
        return self.frames[1] == protocol.Kind.RESULT.value

    @property
    def size(self) -> int:
        return sum(len(frame) for frame in self.frames)


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    reply: Reply
    size: int
    serial: int
    """Tells this entry from a later one under the same call id in the size heap."""


class ReplyCache:
    """Finished replies by call id, bounded in age (``ttl`` seconds), in count and in bytes."""

    def __init__(self, *, ttl: float, max_entries: int, max_bytes: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        """Size of the replies kept, frames summed."""
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._by_size: list[tuple[int, int, bytes]] = []
        """(-size, serial, call id) of every entry, largest first; stale items are skipped when popped."""
        self._serials = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, call_id: bytes) -> Reply | None:
        entry = self._entries.get(call_id)
        if entry is None or entry.expires < time.monotonic():
            return None
        return entry.reply

    def put(self, call_id: bytes, reply: Reply) -> None:
        now = time.monotonic()
        self._remove(call_id)
        entry = _Entry(now + self.ttl, reply, reply.size, next(self._serials))
        self._entries[call_id] = entry
        self.bytes += entry.size
        heapq.heappush(self._by_size, (-entry.size, entry.serial, call_id))
        self._expire(now)
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))
        while self.bytes > self.max_bytes and self._by_size:
            _, serial, largest = heapq.heappop(self._by_size)
            kept = self._entries.get(largest)
            if kept is not None and kept.serial == serial:
                self._remove(largest)
        if len(self._by_size) > 2 * len(self._entries) + 64:  # stale items of replaced or expired entries
            self._by_size = [(-e.size, e.serial, i) for i, e in self._entries.items()]
            heapq.heapify(self._by_size)

    def shrink(self) -> None:
        """Drops what no caller can still use: expired replies, and failed ones, which a caller's
        next attempt runs again anyway. Kept: every result a resend must get instead of a rerun."""
        self._expire(time.monotonic())
        for call_id in [i for i, entry in self._entries.items() if not entry.reply.succeeded]:
            self._remove(call_id)
        self._by_size = [(-e.size, e.serial, i) for i, e in self._entries.items()]
        heapq.heapify(self._by_size)

    def _expire(self, now: float) -> None:
        while self._entries:
            oldest_id, oldest = next(iter(self._entries.items()))
            if oldest.expires >= now:
                return
            self._remove(oldest_id)

    def _remove(self, call_id: bytes) -> None:
        entry = self._entries.pop(call_id, None)
        if entry is not None:
            self.bytes -= entry.size
