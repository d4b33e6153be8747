"""An engine under test, as the operator and local mode drive it: status and Events kept in memory."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Callable
from typing import Any

from schedulezero_operator.sinks import ScheduleKey


class MemorySink:
    """Keeps the last status per Schedule and every event, as the operator would write them."""

    def __init__(self) -> None:
        self.statuses: dict[ScheduleKey, dict[str, Any]] = {}
        self.writes = 0
        self.events: list[tuple[ScheduleKey, str, str]] = []

    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        self.statuses[key] = json.loads(json.dumps(status))  # a copy, as the API server keeps it
        self.writes += 1

    def event(self, key: ScheduleKey, *, warning: bool, reason: str, message: str) -> None:
        self.events.append((key, reason, message))

    def reasons(self, key: ScheduleKey) -> list[str]:
        return [reason for k, reason, _ in self.events if k == key]


class Ownership:
    """Whether the engine under test owns its Schedules now, as its shard's Lease would say."""

    def __init__(self, owned: bool = False) -> None:
        self.owned = owned

    def __call__(self, key: ScheduleKey) -> bool:
        return self.owned


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def eventually(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := predicate()):  # noqa: ASYNC110  (state changed by other tasks and processes)
            await asyncio.sleep(0.05)
    return result
