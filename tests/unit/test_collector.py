"""Holding the garbage collector off during a burst: counted holds, and a collector disabled by someone else
left disabled."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from schedulezero_operator import collector


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    while collector.held():
        collector.release()
    gc.enable() if was else gc.disable()


def test_the_collector_runs_again_only_when_the_last_hold_ends() -> None:
    gc.enable()
    collector.hold()
    collector.hold()  # a second engine in the same process, bursting at the same time
    assert not gc.isenabled()
    collector.release()
    assert not gc.isenabled()
    collector.release()
    assert gc.isenabled()
    assert not collector.held()


def test_a_collector_someone_else_disabled_stays_disabled() -> None:
    gc.disable()
    collector.hold()
    collector.release()
    assert not gc.isenabled()


def test_a_release_without_a_hold_changes_nothing() -> None:
    gc.enable()
    collector.release()
    assert gc.isenabled()
    collector.hold()
    assert not gc.isenabled()
