"""The steps of a key rotation, and which pair and port callers use at each (curve/rotation.py)."""

from __future__ import annotations

import datetime

import pytest

from schedulezero_operator.curve import rotation

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
OLD, NEW = (b"o" * 40, b"O" * 40), (b"n" * 40, b"N" * 40)
OVERLAP = datetime.timedelta(seconds=30)


def step(keys: rotation.Keys, **options: object) -> rotation.Step:
    settings: dict[str, object] = {
        "now": NOW,
        "request": None,
        "interval": None,
        "overlap": OVERLAP,
        "served_for": None,
    }
    return rotation.step(keys, **{**settings, **options})  # type: ignore[arg-type]


def test_a_new_request_begins_a_rotation_once() -> None:
    steady = rotation.Keys(server=OLD, since=NOW, handled="r1")
    assert step(steady, request="r2") is rotation.Step.BEGIN
    assert step(steady, request="r1") is rotation.Step.NONE
    assert step(steady) is rotation.Step.NONE


def test_an_interval_begins_a_rotation_when_the_pair_is_that_old() -> None:
    steady = rotation.Keys(server=OLD, since=NOW - datetime.timedelta(hours=2))
    assert step(steady, interval=datetime.timedelta(hours=3)) is rotation.Step.NONE
    assert step(steady, interval=datetime.timedelta(hours=2)) is rotation.Step.BEGIN


def test_each_later_step_waits_for_the_pods_to_serve_it_for_the_overlap() -> None:
    overlap = rotation.Keys(server=OLD, next=NEW, since=NOW)
    promoted = rotation.Keys(server=NEW, next=NEW, since=NOW)
    for keys, then in ((overlap, rotation.Step.PROMOTE), (promoted, rotation.Step.FINISH)):
        assert step(keys, served_for=None) is rotation.Step.NONE
        assert step(keys, served_for=OVERLAP - datetime.timedelta(seconds=1)) is rotation.Step.NONE
        assert step(keys, served_for=OVERLAP) is then
        assert step(keys, served_for=OVERLAP, request="another") is then  # a request waits for the rotation to end


def test_callers_use_the_newest_pair_the_pods_are_seen_serving() -> None:
    overlap = rotation.Keys(server=OLD, next=NEW)
    promoted = rotation.Keys(server=NEW, next=NEW)
    assert rotation.call_with(overlap, next_served=False, main_served=False) == (OLD, False)
    assert rotation.call_with(overlap, next_served=True, main_served=False) == (NEW, True)
    assert rotation.call_with(promoted, next_served=False, main_served=False) == (NEW, True)
    assert rotation.call_with(promoted, next_served=False, main_served=True) == (NEW, False)
    assert rotation.call_with(rotation.Keys(server=NEW), next_served=False, main_served=False) == (NEW, False)


@pytest.mark.parametrize(("text", "seconds"), [("720h", 720 * 3600), ("90m", 5400), ("1h30m", 5400), ("61s", 61)])
def test_rotation_intervals(text: str, seconds: int) -> None:
    assert rotation.parse_interval(text) == datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1d", "30s", "h", "1.5h"])
def test_a_bad_rotation_interval_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="rotationInterval"):
        rotation.parse_interval(text)
