"""Counts in log lines read as English: "1 shard", "2 shards"."""

from __future__ import annotations

from schedulezero_handler import text


def test_one_is_singular_and_every_other_number_plural() -> None:
    assert text.count(1, "shard") == "1 shard"
    assert text.count(0, "Schedule") == "0 Schedules"
    assert text.count(2, "method") == "2 methods"
    assert text.count(3, "replica", "replicas") == "3 replicas"
