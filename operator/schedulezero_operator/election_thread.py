"""The election on a thread and event loop of its own, so that a busy replica renews its Leases on time.

A replica firing a thousand runs a second, or catching up ten thousand
Schedules when it takes a shard over, keeps its event loop busy for seconds at
a time. On that loop its renewals would wait behind the work, miss the renew
deadline and hand its shards over for nothing, and the takeover that follows
is more of the same work. On a thread of its own the election gets the
interpreter every few milliseconds (Python hands the GIL over every 5 ms),
whatever the operator's loop is doing.

The election's requests go through an API client of its own and outside the
operator's API budget: they are few and bounded (per retry period, a
heartbeat, a list of the members and a renewal per shard held, and one watch
of the Leases) and must never wait. What the election decides reaches the operator's loop as callbacks; the
engine's fencing (``Elector.owns_shard``) reads the renew times directly,
which needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from schedulezero_operator import election

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 30.0
"""Seconds ``stop`` waits for the thread: its Leases are released by then, or expire."""


class NotConnected:
    """The store of an Elector whose thread has not connected yet: any use is a bug."""

    async def get(self, name: str) -> election.LeaseRecord | None:
        raise RuntimeError("the election's Lease store is not connected yet")

    async def create(self, name: str, record: election.LeaseRecord) -> election.LeaseRecord:
        raise RuntimeError("the election's Lease store is not connected yet")

    async def update(self, name: str, record: election.LeaseRecord) -> election.LeaseRecord:
        raise RuntimeError("the election's Lease store is not connected yet")

    async def list_all(self) -> dict[str, election.LeaseRecord]:
        raise RuntimeError("the election's Lease store is not connected yet")

    async def delete(self, name: str) -> None:
        raise RuntimeError("the election's Lease store is not connected yet")

    async def watch(self, changed: Callable[[str, str | None], None]) -> None:
        raise RuntimeError("the election's Lease store is not connected yet")


Connect = Callable[[], Awaitable[tuple[election.LeaseStore, Callable[[], Awaitable[None]]]]]
"""Makes the Lease store in the election's loop, with the coroutine function that closes it."""


class ElectionThread:
    """Runs an ``Elector`` on its own thread; its callbacks run on the loop that started it, in order."""

    def __init__(self, elector: election.Elector, connect: Connect) -> None:
        self.elector = elector
        self._connect = connect
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    async def start(
        self,
        *,
        on_acquired: Callable[[int, int], None],
        on_lost: Callable[[int, str], None],
        before_release: Callable[[int], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Starts the thread, and returns once the election's store is connected and its rounds begin.

        ``on_acquired(shard, generation)`` (``Elector.generation`` when it was
        acquired) and ``on_lost(shard, why)`` are called on this loop, in the
        order the election decided them; ``before_release(shard)`` runs on this
        loop too, while the election waits for it before releasing the shard.
        """
        main = asyncio.get_running_loop()
        ready: asyncio.Future[None] = main.create_future()
        elector = self.elector

        def acquired(shard: int) -> None:  # on the election's thread: the generation as of now
            main.call_soon_threadsafe(on_acquired, shard, elector.generation[shard])

        def lost(shard: int, why: str) -> None:
            main.call_soon_threadsafe(on_lost, shard, why)

        elector.on_acquired, elector.on_lost = acquired, lost
        if before_release is not None:
            hook = before_release

            async def handing_over(shard: int) -> None:  # on the election's thread, waiting on this loop
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(hook(shard), main))

            elector.before_release = handing_over

        async def serve() -> None:
            self._stopping = asyncio.Event()
            try:
                elector.store, close = await self._connect()
            except BaseException as error:
                main.call_soon_threadsafe(_settle, ready, error)
                return
            elector.start()
            main.call_soon_threadsafe(_settle, ready, None)
            try:
                await self._stopping.wait()
                await elector.stop()
            finally:
                with contextlib.suppress(Exception):
                    await close()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="schedulezero-election", daemon=True)
        self._thread.start()
        await ready

    async def stop(self) -> None:
        """Stops renewing and releases the Leases held (``Elector.stop``), then ends the thread."""
        if self._loop is None or self._thread is None or self._stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._stopping.set)
        await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT)
        if self._thread.is_alive():
            log.warning("the election thread did not end within %.0f s; its Leases expire instead", JOIN_TIMEOUT)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)
