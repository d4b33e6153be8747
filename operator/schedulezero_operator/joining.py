"""When a replica enters the election: once it has seen every Schedule that existed when it started.

The Schedule watch (``schedule_watch``) delivers a replica's initial listing
as one event per Schedule, on the loop that also catches a shard up when the
replica takes it. A replica that took shards before that listing was through
would hold Schedules it had not seen, and its takeover would wait behind the
rest of the listing: half a minute at 10,000 Schedules on two cores, during
which nobody fires them. Staying out of the election until then (no
heartbeat, so the others do not count it in their fair share either) lets
the replicas that already know every Schedule take a departing replica's
shards within a retry period; the newcomer takes its share once it joins.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from schedulezero_handler import text
from schedulezero_operator.sinks import ScheduleKey

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JoinSettings:
    stall: float = 30.0
    """Join anyway once no listed Schedule has shown up for this long: one deleted between this replica's
    list and the watch's never shows, and an operator that never joins would fire nothing."""
    poll: float = 0.2
    """Seconds between looks at what the watch has delivered."""


class Listing:
    """The Schedules listed at start, ticked off as the watch delivers them."""

    def __init__(self, settings: JoinSettings | None = None) -> None:
        self.settings = settings or JoinSettings()
        self.complete = False
        self.listed: int | None = None
        """How many Schedules were listed at start, once the list is back."""
        self._seen: set[ScheduleKey] = set()

    def progress(self) -> str:
        """Where the wait stands, in a line (for ``/readyz``)."""
        if self.complete:
            return "saw every Schedule listed at start"
        if self.listed is None:
            return "listing the Schedules"
        return f"saw {len(self._seen)} of the {text.count(self.listed, 'Schedule')} listed at start"

    def saw(self, key: ScheduleKey) -> None:
        """Called for every Schedule event; kept only until the listing is complete."""
        if not self.complete:
            self._seen.add(key)

    async def wait(self, listed: Callable[[], Awaitable[set[ScheduleKey]]]) -> set[ScheduleKey]:
        """Lists the Schedules, then waits until each has been seen or nothing new shows for ``stall``
        seconds; returns those never seen (none, normally).

        A list that fails (any error) waits for nothing: joining at once only risks a slow takeover, while
        an operator that never joined would fire nothing."""
        started = time.monotonic()
        try:
            expected = await listed()
        except Exception as error:
            reason = getattr(error, "reason", None) or error
            log.warning("could not list the Schedules (%s); joining the election without waiting for them", reason)
            expected = set()
        self.listed = len(expected)
        missing = expected - self._seen
        progress, last = len(missing), time.monotonic()
        while missing and time.monotonic() - last < self.settings.stall:
            await asyncio.sleep(self.settings.poll)
            missing -= self._seen
            if len(missing) < progress:
                progress, last = len(missing), time.monotonic()
        self.complete = True
        self._seen.clear()
        log.info(
            "saw %d of the %s listed at start in %.1f s: joining the election",
            len(expected) - len(missing), text.count(len(expected), "Schedule"), time.monotonic() - started,
        )  # fmt: skip
        return missing
