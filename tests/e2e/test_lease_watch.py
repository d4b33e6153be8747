"""The election's watch of its Leases, on the real API server and with the operator's own rights.

Rounds are a minute apart here, so a shard taken within seconds of its
release can only have been taken on the watch's word: a rolling update's
handover costs a request's time, not a round's.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
import uuid
from collections.abc import Callable

import pytest

from schedulezero_operator import election, kubeapi, leases

pytestmark = pytest.mark.e2e

LEASE_NAMESPACE = "schedulezero-system"


async def within(seconds: float, done: Callable[[], bool]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if done():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


async def test_a_released_shard_is_taken_within_moments_though_rounds_are_a_minute_apart(
    system_kubeconfigs: dict[str, pathlib.Path],
) -> None:
    settings = election.ElectionSettings(
        shards=2, lease_duration=180, renew_deadline=120, retry_period=60, prefix=f"watch-{uuid.uuid4().hex[:8]}"
    )
    clients = [await kubeapi.connect(str(system_kubeconfigs["operator"])) for _ in range(2)]
    holder, other = (
        election.Elector(leases.KubeLeases(client, namespace=LEASE_NAMESPACE, prefix=settings.prefix),
                         identity=name, settings=settings)
        for client, name in zip(clients, ("holder", "other"), strict=True)
    )  # fmt: skip
    try:
        holder.start()
        await within(10, lambda: holder.held() == [0, 1])
        other.start()
        await asyncio.sleep(2)  # its first round found both shards held; the next is a minute away
        assert other.held() == []
        await holder.stop()
        took = await within(10, lambda: other.held() == [0, 1])
    finally:
        await other.stop()
        for client in clients:
            await client.close()
    assert took < 10
