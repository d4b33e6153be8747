"""The engine's timer: APScheduler's job store and triggers, with due jobs handed out in one piece.

Each test runs a real ``Timer`` (an APScheduler ``AsyncIOScheduler``) on the
test's event loop, with the engine's own triggers, and plays the engine's part:
it takes the due jobs, advances them, and resumes the timer.
"""

from __future__ import annotations

import asyncio
import datetime

from schedulezero_operator import timer as timer_
from schedulezero_operator import triggers

UTC = datetime.UTC
SECOND = datetime.timedelta(seconds=1)


def _job() -> None:
    """A job function the timer never calls."""


def _every(seconds: float, anchor: datetime.datetime, *, end: datetime.datetime | None = None) -> triggers.Trigger:
    return triggers.EveryTrigger(datetime.timedelta(seconds=seconds), anchor=anchor, include_anchor=True, end=end)


class Taker:
    """Receives the timer's hand-overs, as the engine does."""

    def __init__(self) -> None:
        self.handed: list[list[timer_.Due]] = []
        self.arrived = asyncio.Event()

    def __call__(self, due: list[timer_.Due]) -> None:
        self.handed.append(due)
        self.arrived.set()

    async def next(self, timeout: float = 10.0) -> list[timer_.Due]:
        async with asyncio.timeout(timeout):
            await self.arrived.wait()
        self.arrived.clear()
        return self.handed[-1]


def _started(taker: Taker, *, coalesce: bool = False) -> timer_.Timer:
    timer = timer_.Timer(on_due=taker, timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": coalesce})
    timer.start()
    return timer


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


async def test_every_job_due_at_an_instant_is_handed_over_in_one_piece_and_moved_to_its_next_time() -> None:
    taker = Taker()
    timer = _started(taker)
    try:
        at = _now() + 0.3 * SECOND
        for index in range(300):
            timer.add_job(_job, trigger=_every(3600, at), id=f"ns/s{index}", next_run_time=at)
        due = await taker.next()
        assert sorted(d.job.id for d in due) == sorted(f"ns/s{index}" for index in range(300))
        assert all(d.now >= at for d in due)
        advanced = [timer.advance(d) for d in due]
        assert all(a.run_times == [at] and a.following == at + 3600 * SECOND and a.current for a in advanced)
        assert {job.next_run_time for job in timer.get_jobs()} == {at}  # untouched until settled
        for d, a in zip(due, advanced, strict=True):
            timer.settle(d, a)
        assert {job.next_run_time for job in timer.get_jobs()} == {at + 3600 * SECOND}
    finally:
        timer.shutdown(wait=False)


async def test_jobs_still_due_are_not_handed_over_again_until_the_engine_resumes_the_timer() -> None:
    taker = Taker()
    timer = _started(taker)
    try:
        at = _now() + 0.2 * SECOND
        timer.add_job(_job, trigger=_every(1, at), id="ns/a", next_run_time=at)
        timer.add_job(_job, trigger=_every(1, at), id="ns/b", next_run_time=at)
        first = await taker.next()
        assert len(first) == 2
        timer.settle(first[0], timer.advance(first[0]))  # the other one is still due, in the engine's queue
        timer.wakeup()  # as adding or changing a job does
        await asyncio.sleep(1.5)
        assert len(taker.handed) == 1
        timer.settle(first[1], timer.advance(first[1]))
        timer.resume()
        second = await taker.next()
        assert {d.job.id for d in second} == {"ns/a", "ns/b"}
    finally:
        timer.shutdown(wait=False)


async def test_a_job_late_by_several_times_gets_them_all_and_its_next_time_after_the_last() -> None:
    """As when the event loop was held up past several of a Schedule's times: every one is handed over (the
    engine's startingDeadlineSeconds judges them), and the job moves to the first time after them."""
    taker = Taker()
    timer = _started(taker)
    try:
        at = _now().replace(microsecond=0) - 3 * SECOND
        timer.add_job(_job, trigger=_every(1, at), id="ns/late", next_run_time=at)
        due = await taker.next()
        advanced = timer.advance(due[0])
        assert advanced.run_times == [at + index * SECOND for index in range(len(advanced.run_times))]
        assert len(advanced.run_times) >= 4
        assert advanced.following == advanced.run_times[-1] + SECOND
        timer.settle(due[0], advanced)
        assert timer.get_job("ns/late").next_run_time == advanced.following
    finally:
        timer.shutdown(wait=False)


async def test_coalescing_jobs_get_only_the_latest_due_time() -> None:
    taker = Taker()
    timer = _started(taker, coalesce=True)
    try:
        at = _now().replace(microsecond=0) - 3 * SECOND
        timer.add_job(_job, trigger=_every(1, at), id="ns/c", next_run_time=at)
        due = await taker.next()
        advanced = timer.advance(due[0])
        assert len(advanced.run_times) == 1
        assert advanced.run_times[0] >= at + 3 * SECOND
        assert advanced.following == advanced.run_times[0] + SECOND
    finally:
        timer.shutdown(wait=False)


async def test_a_job_replaced_after_the_wake_up_gives_its_due_time_and_keeps_the_replacements_next_time() -> None:
    """A Schedule changed between the wake-up and its turn: the time due then is still run, and the changed
    Schedule's timer stays as the change set it."""
    taker = Taker()
    timer = _started(taker)
    try:
        at = _now() + 0.2 * SECOND
        timer.add_job(_job, trigger=_every(60, at), id="ns/changed", next_run_time=at)
        due = await taker.next()
        changed = at + 30 * SECOND
        timer.add_job(_job, trigger=_every(120, changed), id="ns/changed", replace_existing=True, next_run_time=changed)
        advanced = timer.advance(due[0])
        assert advanced.run_times == [at]
        assert not advanced.current
        timer.settle(due[0], advanced)
        assert timer.get_job("ns/changed").next_run_time == changed
    finally:
        timer.shutdown(wait=False)


async def test_a_job_with_no_time_left_is_removed_once_advanced() -> None:
    taker = Taker()
    timer = _started(taker)
    try:
        at = _now() + 0.2 * SECOND
        timer.add_job(_job, trigger=_every(60, at, end=at + SECOND), id="ns/last", next_run_time=at)
        due = await taker.next()
        advanced = timer.advance(due[0])
        assert advanced.run_times == [at]
        assert advanced.following is None
        assert advanced.current
        timer.settle(due[0], advanced)
        assert timer.get_job("ns/last") is None
    finally:
        timer.shutdown(wait=False)
