"""The API budget on a clock of the test's own: its bound holds under any load, the election first."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedulezero_operator import budget as budget_
from schedulezero_operator.budget import Priority


class VirtualTime:
    """A clock that moves only when every task is waiting: a discrete-event simulation in the event loop."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._order), future))
        await future

    async def advance_to(self, moment: float) -> None:
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= moment:
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            future.set_result(None)
            await _settle()
        self.now = max(self.now, moment)
        await _settle()


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@dataclasses.dataclass
class Request:
    arrival: float
    priority: Priority
    granted: float | None = None


async def _simulate(qps: float, burst: int, requests: list[Request]) -> None:
    time = VirtualTime()
    budget = budget_.Budget(budget_.BudgetSettings(qps=qps, burst=burst), clock=time.clock, sleep=time.sleep)

    async def make(request: Request) -> None:
        await budget.acquire("test", priority=request.priority)
        request.granted = time.now

    tasks = []
    for request in sorted(requests, key=lambda r: r.arrival):
        await time.advance_to(request.arrival)
        tasks.append(asyncio.get_running_loop().create_task(make(request)))
        await _settle()
    await time.advance_to(max(r.arrival for r in requests) + len(requests) / qps + 1)
    await asyncio.gather(*tasks)
    assert budget.waiting == 0


requests_ = st.lists(
    st.builds(
        Request,
        # Bursts at a few instants, as Schedules on the same cron time, and arrivals in between.
        arrival=st.one_of(st.sampled_from([0.0, 0.5, 4.0]), st.floats(0, 5).map(lambda t: round(t, 3))),
        priority=st.sampled_from(Priority),
    ),
    min_size=1,
    max_size=150,
)


def _assert_served_in_order(requests: list[Request]) -> None:
    """By priority, then in order of arrival: what keeps a status backlog from starving anyone.

    Within a priority no request is served before one that arrived earlier (ties
    in the order they were made), and no status write is served while an
    election request that arrived before it was granted still waits.
    """
    made = sorted(range(len(requests)), key=lambda i: requests[i].arrival)  # as _simulate makes them
    for priority in Priority:
        grants = [requests[i].granted or 0.0 for i in made if requests[i].priority is priority]
        assert grants == sorted(grants), f"{priority.name} served out of arrival order"
    elections = [r for r in requests if r.priority is Priority.ELECTION]
    for status in (r for r in requests if r.priority is Priority.STATUS):
        for election in elections:
            if election.arrival < (status.granted or 0.0):
                assert (election.granted or 0.0) <= (status.granted or 0.0), "a status write went first"


@settings(max_examples=300, deadline=None)
@given(qps=st.sampled_from([1.0, 5.0, 20.0, 50.0]), burst=st.integers(1, 40), requests=requests_)
def test_no_window_sees_more_than_qps_times_its_length_plus_burst(
    qps: float, burst: int, requests: list[Request]
) -> None:
    asyncio.run(_simulate(qps, burst, requests))
    granted = sorted(r.granted for r in requests if r.granted is not None)
    assert len(granted) == len(requests)  # every request is served in the end
    _assert_served_in_order(requests)
    for first, second in itertools.combinations(range(len(granted)), 2):
        in_window = second - first + 1
        assert in_window <= qps * (granted[second] - granted[first]) + burst + 1e-6


@settings(max_examples=60, deadline=None)
@given(qps=st.sampled_from([5.0, 20.0]), burst=st.integers(1, 10), requests=requests_)
def test_an_election_request_waits_only_for_tokens_not_for_the_status_backlog(
    qps: float, burst: int, requests: list[Request]
) -> None:
    backlog = [Request(0.0, Priority.STATUS) for _ in range(200)]  # far more status writes than tokens
    asyncio.run(_simulate(qps, burst, backlog + requests))
    elections = [r for r in requests if r.priority is Priority.ELECTION]
    for request in elections:
        assert request.granted is not None
        # Served once the election requests before it are: one token each, plus its own.
        ahead = sum(1 for other in elections if other.arrival <= request.arrival and other is not request)
        assert request.granted - request.arrival <= (ahead + 1) / qps + 0.002  # the dispatcher naps ≥ 1 ms
    if elections:  # and the backlog did wait for them
        assert max(r.granted or 0.0 for r in backlog) > max(r.granted or 0.0 for r in elections)
    # With or without election requests: the backlog in its order, then later status writes, paced.
    _assert_served_in_order(backlog + requests)
    later = [r for r in requests if r.priority is Priority.STATUS and r.arrival > 0]
    assert all((r.granted or 0.0) >= max(b.granted or 0.0 for b in backlog) for r in later)
    assert max(b.granted or 0.0 for b in backlog) >= (len(backlog) - burst) / qps - 1e-6


async def test_a_request_cancelled_while_waiting_costs_no_token() -> None:
    time = VirtualTime()
    budget = budget_.Budget(budget_.BudgetSettings(qps=1.0, burst=1), clock=time.clock, sleep=time.sleep)
    await budget.acquire("first")
    waiting = asyncio.get_running_loop().create_task(budget.acquire("cancelled"))
    await _settle()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    later = asyncio.get_running_loop().create_task(budget.acquire("later"))
    await time.advance_to(1.0)
    assert later.done()
    assert dict(budget.granted) == {"first": 1, "later": 1}


@pytest.mark.parametrize(("qps", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_settings_out_of_range_are_refused(qps: float, burst: int) -> None:
    with pytest.raises(ValueError, match="budget"):
        budget_.BudgetSettings(qps=qps, burst=burst)
