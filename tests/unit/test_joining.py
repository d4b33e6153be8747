"""When a replica joins the election: after the watch has delivered every Schedule listed at start."""

from __future__ import annotations

import asyncio

from schedulezero_operator import joining
from schedulezero_operator.sinks import ScheduleKey

KEYS = {ScheduleKey("ns", f"s{i}") for i in range(50)}


def listing(*, stall: float = 5.0) -> joining.Listing:
    return joining.Listing(joining.JoinSettings(stall=stall, poll=0.01))


async def listed() -> set[ScheduleKey]:
    return set(KEYS)


async def test_it_waits_for_every_listed_schedule_seen_before_or_after_the_list() -> None:
    gate = listing()
    early, late = sorted(KEYS)[:20], sorted(KEYS)[20:]
    for key in early:  # the watch may deliver some before the list returns
        gate.saw(key)
    waiting = asyncio.ensure_future(gate.wait(listed))
    for key in late[:-1]:
        gate.saw(key)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)
    assert not waiting.done()  # one is still to come
    gate.saw(late[-1])
    assert await asyncio.wait_for(waiting, 1.0) == set()
    assert gate.complete


async def test_a_schedule_that_never_shows_does_not_keep_it_out_once_nothing_new_comes() -> None:
    gate = listing(stall=0.2)
    gone = sorted(KEYS)[0]  # deleted between this replica's list and kopf's
    for key in KEYS - {gone}:
        gate.saw(key)
    assert await asyncio.wait_for(gate.wait(listed), 2.0) == {gone}
    assert gate.complete


async def test_a_slow_listing_that_keeps_progressing_is_waited_for_beyond_the_stall() -> None:
    gate = listing(stall=0.15)
    waiting = asyncio.ensure_future(gate.wait(listed))
    for key in sorted(KEYS):  # 50 times 0.02 s: several times the stall, but never stalled
        gate.saw(key)
        await asyncio.sleep(0.02)
    assert await asyncio.wait_for(waiting, 1.0) == set()


async def test_once_complete_it_keeps_nothing() -> None:
    gate = listing()
    for key in KEYS:
        gate.saw(key)
    await gate.wait(listed)
    gate.saw(ScheduleKey("ns", "later"))
    assert gate._seen == set()


async def test_an_operator_that_cannot_list_joins_anyway_rather_than_never() -> None:
    """An operator outside the election fires nothing: a failed list (timeout, no route) must not keep it out."""
    from types import SimpleNamespace

    from schedulezero_operator import controller

    class Election:
        started = False

        async def start(self, **_: object) -> None:
            self.started = True

    class Budget:
        async def acquire(self, kind: str) -> None:
            pass

    class Api:
        async def schedule_keys(self, namespaces: tuple[str, ...]) -> set[ScheduleKey]:
            raise TimeoutError("the API server did not answer")

    election = Election()
    runtime = SimpleNamespace(budget=Budget(), api=Api(), listing=listing(), election=election)
    await controller._join(runtime, controller.ControllerSettings())  # type: ignore[arg-type]
    assert election.started
    assert runtime.listing.complete


async def test_its_progress_says_what_it_waits_for() -> None:
    gate = listing(stall=5.0)
    assert gate.progress() == "listing the Schedules"
    for key in sorted(KEYS)[:10]:
        gate.saw(key)
    waiting = asyncio.ensure_future(gate.wait(listed))
    await asyncio.sleep(0.05)
    assert gate.progress() == "saw 10 of the 50 Schedules listed at start"
    for key in KEYS:
        gate.saw(key)
    await asyncio.wait_for(waiting, 1.0)
    assert gate.progress() == "saw every Schedule listed at start"
