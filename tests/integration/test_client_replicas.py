"""What the client tells a caller that routes over handler replicas: which pods are down, at once, and
connections to pods gone from a Service closed without losing the replies still on their way."""

from __future__ import annotations

import asyncio
import pathlib

from schedulezero_handler import client as client_
from schedulezero_handler import routing
from tests.support import processes

PROBE = "tests.support.handlers:ProbeHandler"


async def test_a_killed_pod_is_known_down_at_once_and_up_again_when_it_is_back(
    tmp_path: pathlib.Path, client: client_.Client
) -> None:
    changes: list[tuple[str, bool]] = []
    client.on_connection = lambda endpoint, up: changes.append((endpoint, up))
    handler = processes.start_handler(PROBE, tmp_path)
    port = int(handler.endpoint.rsplit(":", 1)[1])
    try:
        await client.call(handler.endpoint, "echo", {"value": 1}, timeout=5)
        assert changes == [(handler.endpoint, True)]
        assert not client.is_down(handler.endpoint)
        handler.kill()
        for _ in range(100):  # the socket monitor reports the loss within milliseconds, not a probe interval
            if client.is_down(handler.endpoint):
                break
            await asyncio.sleep(0.01)
        assert client.is_down(handler.endpoint)
        assert changes[-1] == (handler.endpoint, False)
        # A run routed while the pod is down goes to the next pod of its ranking.
        other = "tcp://127.0.0.1:9"
        pair = [handler.endpoint, other]
        run = next(key for key in (n.to_bytes(16, "big") for n in range(1000)) if routing.rank(key, pair)[0] == pair[0])
        assert routing.choose(run, pair, down=client.is_down) == other
        handler = processes.start_handler(PROBE, tmp_path, port=port)
        for _ in range(600):  # reconnects by itself (its reconnect interval grows to 5 s)
            if not client.is_down(handler.endpoint):
                break
            await asyncio.sleep(0.01)
        assert not client.is_down(handler.endpoint)
        assert changes[-1] == (handler.endpoint, True)
    finally:
        handler.kill()


async def test_a_retired_connection_closes_once_its_calls_in_flight_are_answered(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    slow = asyncio.ensure_future(client.call(probe.endpoint, "slow", {"seconds": 1.0, "key": "last"}, timeout=5))
    await asyncio.sleep(0.2)
    client.retire(probe.endpoint)  # gone from the Service, while a call still runs there
    assert not client.is_down(probe.endpoint)
    assert await slow == "last"
    await asyncio.sleep(0.1)
    assert probe.endpoint not in client._connections
    # Idle: closed at once; a later call reconnects.
    await client.call(probe.endpoint, "echo", {"value": 1}, timeout=5)
    client.retire(probe.endpoint)
    await asyncio.sleep(0.1)
    assert probe.endpoint not in client._connections
    assert await client.call(probe.endpoint, "echo", {"value": 2}, timeout=5) == 2
