"""The status writer under the API budget: every Schedule converges to its latest state, oldest first."""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from typing import Any

from schedulezero_operator import budget as budget_
from schedulezero_operator import sinks
from schedulezero_operator.budget import Priority
from schedulezero_operator.sinks import ScheduleKey


class Versions:
    """Each Schedule's state is a version number that every change increments; the sink keeps what it got."""

    def __init__(self) -> None:
        self.current: collections.Counter[ScheduleKey] = collections.Counter()
        self.written: dict[ScheduleKey, int] = {}
        self.order: list[ScheduleKey] = []

    def render(self, key: ScheduleKey) -> dict[str, Any]:
        return {"version": self.current[key]}

    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        await asyncio.sleep(0.001)  # an API round trip, short
        self.written[key] = status["version"]
        self.order.append(key)


def _keys(count: int) -> list[ScheduleKey]:
    return [ScheduleKey("ns", f"s{index}") for index in range(count)]


def _backlogged(
    versions: Versions, keys: list[ScheduleKey], *, qps: float
) -> tuple[sinks.StatusWriter, budget_.Budget]:
    """A started writer with a change of every key pending, under a budget of ``qps`` and a burst of 1."""
    budget = budget_.Budget(budget_.BudgetSettings(qps=qps, burst=1))
    writer = sinks.StatusWriter(versions, versions.render, interval=10.0, settle=0.0, budget=budget)
    writer.start()
    for key in keys:
        versions.current[key] += 1
        writer.mark(key)
    return writer, budget


async def _drained(writer: sinks.StatusWriter, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while writer.backlog()[0]:  # noqa: ASYNC110  (written by the writer's own tasks)
            await asyncio.sleep(0.01)


async def test_under_a_budget_every_schedule_ends_with_its_latest_state_and_the_rate_holds() -> None:
    versions = Versions()
    grants: list[float] = []
    budget = budget_.Budget(
        budget_.BudgetSettings(qps=200, burst=5), on_grant=lambda kind: grants.append(time.monotonic())
    )
    writer = sinks.StatusWriter(versions, versions.render, interval=0.05, settle=0.01, budget=budget)
    writer.start()
    keys = _keys(150)
    rng = random.Random(7)
    try:
        for _ in range(1500):  # changes at random, far more than the budget writes: most coalesce
            key = rng.choice(keys)
            versions.current[key] += 1
            writer.mark(key)
            if rng.random() < 0.1:
                await asyncio.sleep(0.001)
        await _drained(writer, timeout=30)
    finally:
        await writer.stop(flush=False)
    assert versions.written == dict(versions.current)  # every changed Schedule, with its latest state
    assert len(grants) < 1500
    for first in range(len(grants)):
        for second in range(first + 1, min(len(grants), first + 60)):
            assert second - first + 1 <= 200 * (grants[second] - grants[first]) + 5 + 1  # a token of rounding


async def test_a_backlog_is_written_oldest_change_first() -> None:
    versions = Versions()
    budget = budget_.Budget(budget_.BudgetSettings(qps=100, burst=1))
    writer = sinks.StatusWriter(versions, versions.render, interval=10.0, settle=0.0, budget=budget)
    writer.start()
    keys = _keys(40)
    try:
        for key in keys:
            versions.current[key] += 1
            writer.mark(key)
            await asyncio.sleep(0.002)  # each marked a little after the one before
        await _drained(writer, timeout=10)
    finally:
        await writer.stop(flush=False)
    assert versions.order == keys


async def test_a_change_and_its_follow_up_within_the_settle_time_cost_one_write() -> None:
    versions = Versions()
    writer = sinks.StatusWriter(versions, versions.render, interval=2.0, settle=0.3)
    writer.start()
    key = ScheduleKey("ns", "quick")
    try:
        versions.current[key] += 1  # a run starts...
        writer.mark(key)
        await asyncio.sleep(0.05)
        versions.current[key] += 1  # ...and ends
        writer.mark(key)
        await _drained(writer, timeout=5)
    finally:
        await writer.stop(flush=False)
    assert versions.order == [key]
    assert versions.written[key] == 2


async def test_an_election_request_goes_before_a_status_backlog() -> None:
    versions = Versions()
    writer, budget = _backlogged(versions, _keys(200), qps=100)  # two seconds of status writes
    try:
        await asyncio.sleep(0.2)
        await budget.acquire("lease", priority=Priority.ELECTION)
        still_waiting, _ = writer.backlog()
        await _drained(writer, timeout=20)
    finally:
        await writer.stop(flush=False)
    assert still_waiting > 100  # the Lease went through long before the backlog drained


async def test_stop_flushes_a_backlog_without_waiting_for_the_budget() -> None:
    versions = Versions()
    writer, _ = _backlogged(versions, _keys(30), qps=1)
    async with asyncio.timeout(5):  # thirty seconds at the budget's rate
        await writer.stop()
    assert versions.written == dict(versions.current)


async def test_the_backlog_is_read_from_the_metrics_thread_while_the_loop_changes_it() -> None:
    """/metrics reads the backlog from a thread of its own: at 100,000 pending changes a scrape once failed
    with "dictionary changed size during iteration" as the loop marked and wrote Schedules meanwhile."""
    versions = Versions()
    keys = _keys(100_000)
    writer, _ = _backlogged(versions, keys, qps=1.0)  # nothing drains: the backlog stays large
    failures: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                writer.backlog()
            except RuntimeError as error:
                failures.append(error)
                return

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not failures:
            for key in random.sample(keys, 2_000):  # changes landing and going, as runs end and writes succeed
                writer.forget(key)
                writer.mark(key)
            await asyncio.sleep(0)
    finally:
        done.set()
        thread.join()
        await writer.stop(flush=False)
    assert not failures, failures
