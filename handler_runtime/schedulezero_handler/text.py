"""Words for the logs and the terminal: "1 shard", "2 shards"."""

from __future__ import annotations


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, made plural (``noun + "s"`` unless given) for any number but 1."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
