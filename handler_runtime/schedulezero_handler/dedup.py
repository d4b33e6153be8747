"""Replies kept by call id, so a retried call gets its first answer instead of running again.

Delivery is at-least-once (a caller resends after a lost reply, an operator
re-fires after a crash); keeping replies makes execution exactly-once for as
long as they are kept. A failed call is different: a caller's next *attempt*
(a higher attempt number) asks for it to run again, while a resend of the same
attempt still gets the stored error. Every entry lives for the same time, so
insertion order is expiry order and eviction only looks at the oldest entries.
"""

from __future__ import annotations

import collections
import dataclasses
import time

from schedulezero_handler import protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    frames: list[bytes]
    attempt: int

    @property
    def succeeded(self) -> bool:
        return self.frames[1] == protocol.Kind.RESULT.value


class ReplyCache:
    """Finished replies by call id, bounded in age (``ttl`` seconds) and in count."""

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[bytes, tuple[float, Reply]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, call_id: bytes) -> Reply | None:
        entry = self._entries.get(call_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, call_id: bytes, reply: Reply) -> None:
        now = time.monotonic()
        self._entries.pop(call_id, None)
        self._entries[call_id] = (now + self.ttl, reply)
        while self._entries:
            oldest_id, (expires, _) = next(iter(self._entries.items()))
            if expires >= now and len(self._entries) <= self.max_entries:
                break
            del self._entries[oldest_id]
