"""Rendezvous routing: every caller picks the same pod for a run, and pods coming or going move only their share."""

from __future__ import annotations

import collections
import datetime
import random
import uuid

from hypothesis import given
from hypothesis import strategies as st

from schedulezero_handler import routing
from schedulezero_operator import runs

pods = st.lists(
    st.builds(lambda a, b: f"tcp://10.{a}.{b}.7:5555", st.integers(0, 255), st.integers(0, 255)),
    min_size=1,
    max_size=8,
    unique=True,
)
run_ids = st.binary(min_size=16, max_size=16)


@given(run_ids, pods, st.randoms())
def test_every_caller_picks_the_same_pod_whatever_the_order_it_lists_them(run: bytes, endpoints, rng) -> None:
    shuffled = list(endpoints)
    rng.shuffle(shuffled)
    assert routing.choose(run, endpoints) == routing.choose(run, shuffled) == routing.rank(run, shuffled)[0]


@given(st.lists(run_ids, min_size=1, max_size=200), pods, st.data())
def test_a_pod_leaving_moves_only_its_own_runs_each_to_its_next_choice(runs: list[bytes], endpoints, data) -> None:
    gone = data.draw(st.sampled_from(endpoints))
    rest = [endpoint for endpoint in endpoints if endpoint != gone]
    for run in runs:
        before = routing.rank(run, endpoints)
        after = routing.choose(run, rest)
        if before[0] != gone:
            assert after == before[0]
        else:
            assert after == (before[1] if len(before) > 1 else None)


@given(st.lists(run_ids, min_size=1, max_size=200), pods, st.integers(0, 255))
def test_a_pod_joining_takes_runs_only_for_itself(runs: list[bytes], endpoints, octet: int) -> None:
    new = f"tcp://192.168.0.{octet}:5555"
    for run in runs:
        after = routing.choose(run, [*endpoints, new])
        assert after in (routing.choose(run, endpoints), new)


@given(run_ids, pods, st.data())
def test_a_pod_known_down_is_passed_over_for_the_next_in_the_ranking(run: bytes, endpoints, data) -> None:
    down = set(data.draw(st.lists(st.sampled_from(endpoints), unique=True)))
    ranking = routing.rank(run, endpoints)
    expected = next((endpoint for endpoint in ranking if endpoint not in down), ranking[0])
    assert routing.choose(run, endpoints, down=down.__contains__) == expected


def test_no_pod_no_route() -> None:
    assert routing.choose(b"run", []) is None


def test_runs_spread_evenly_over_the_pods() -> None:
    """Ten thousand run ids as the operator derives them (``uuid5`` of a Schedule's uid and a nominal time).

    Ten Schedules' next thousand minutes each, over 3 and 5 pods: each pod within 5% of its share.
    """
    rng = random.Random(22)
    uids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(10)]
    start = datetime.datetime(2026, 12, 3, 0, 0, tzinfo=datetime.UTC)
    run_ids = [runs.run_id(uid, start + datetime.timedelta(minutes=m)) for uid in uids for m in range(1000)]
    assert len(set(run_ids)) == 10_000
    assert {run.version for run in run_ids} == {5}
    for count in (3, 5):
        endpoints = [f"tcp://10.0.0.{i}:5555" for i in range(count)]
        share = collections.Counter(routing.choose(run.bytes, endpoints) for run in run_ids)
        assert set(share) == set(endpoints)
        for endpoint in endpoints:
            assert abs(share[endpoint] / 10_000 - 1 / count) < 0.05, share
