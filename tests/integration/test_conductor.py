"""The conductor against real handler processes: its methods and its /metrics."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from schedulezero_handler import client as client_
from tests.support import conductor, processes
from tests.support.waiting import eventually

PROBE = "tests.support.handlers:ProbeHandler"


def call(endpoint: str, method: str, params: dict[str, Any] | None = None) -> Any:
    async def go() -> Any:
        async with client_.Client() as client:
            return await client.call(endpoint, method, params, timeout=10)

    return asyncio.run(go())


@pytest.fixture
def handlers(tmp_path: pathlib.Path) -> Iterator[list[processes.HandlerProcess]]:
    started = [processes.start_handler(PROBE, tmp_path) for _ in range(2)]
    yield started
    for handler in started:
        handler.kill()


def write_config(path: pathlib.Path, targets: dict[str, str]) -> None:
    path.write_text(yaml.safe_dump({"handlers": [{"name": n, "endpoint": e} for n, e in targets.items()]}))


@pytest.fixture
def running(tmp_path: pathlib.Path, handlers: list[processes.HandlerProcess]) -> Iterator[conductor.ConductorProcess]:
    config = tmp_path / "conductor.yaml"
    write_config(config, {"alpha": handlers[0].endpoint, "beta": handlers[1].endpoint})
    process = conductor.start_conductor(tmp_path, config=config)
    yield process
    process.stop()


def test_collect_metrics_returns_the_documented_shape(
    running: conductor.ConductorProcess, handlers: list[processes.HandlerProcess]
) -> None:
    result = eventually(lambda: (r := call(running.endpoint, "collect_metrics"))["summary"]["alive"] == 2 and r)
    assert set(result["handlers"]) == {"alpha", "beta"}
    for entry in result["handlers"].values():
        assert entry["status"] == "active"
        assert 5 < entry["memory_mb"] < 2000
    eventually(lambda: call(running.endpoint, "collect_metrics")["handlers"]["alpha"]["cpu_percent"] is not None)
    summary = result["summary"]
    assert summary["total"] == 2
    assert summary["total_memory_mb"] == pytest.approx(
        sum(h["memory_mb"] for h in result["handlers"].values()), abs=0.2
    )

    call(handlers[1].endpoint, "sys.sleep")
    eventually(lambda: call(running.endpoint, "collect_metrics")["handlers"]["beta"]["status"] == "sleeping")
    handlers[0].kill()
    after = eventually(lambda: (r := call(running.endpoint, "collect_metrics"))["summary"]["alive"] == 1 and r)
    assert after["handlers"]["alpha"]["status"] == "unreachable"
    assert after["summary"]["unreachable"] == 1


def test_health_check_and_system_metrics(running: conductor.ConductorProcess) -> None:
    health = eventually(lambda: (h := call(running.endpoint, "health_check"))["handlers"] == 2 and h)
    assert health["status"] == "ok"
    system = call(running.endpoint, "get_system_metrics")
    assert 0 <= system["cpu_percent"] <= 100
    assert system["memory"]["total_mb"] > 0
    assert system["disk"]["path"] == "/"
    assert 0 <= system["disk"]["percent"] <= 100


def test_metrics_follow_the_handlers(
    running: conductor.ConductorProcess, handlers: list[processes.HandlerProcess], tmp_path: pathlib.Path
) -> None:
    eventually(lambda: running.value("schedulezero_handler_up", handler="alpha") == 1.0)
    memory = running.value("schedulezero_handler_resident_memory_bytes", handler="alpha")
    assert memory is not None
    assert 5e6 < memory < 2e9
    call(handlers[0].endpoint, "echo", {"value": 1})
    eventually(
        lambda: running.value("schedulezero_handler_calls_total", handler="alpha", method="echo", outcome="ok") == 1.0
    )
    assert running.value("schedulezero_conductor_scrape_duration_seconds") is not None

    call(handlers[1].endpoint, "sys.sleep")
    eventually(lambda: running.value("schedulezero_handler_sleeping", handler="beta") == 1.0)
    handlers[0].kill()
    eventually(lambda: running.value("schedulezero_handler_up", handler="alpha") == 0.0)
    assert running.value("schedulezero_handler_resident_memory_bytes", handler="alpha") is None

    # A handler removed from the configuration disappears; one added appears, without a restart.
    third = processes.start_handler(PROBE, tmp_path)
    try:
        write_config(tmp_path / "conductor.yaml", {"beta": handlers[1].endpoint, "gamma": third.endpoint})
        eventually(lambda: running.value("schedulezero_handler_up", handler="gamma") == 1.0)
        eventually(lambda: running.value("schedulezero_handler_up", handler="alpha") is None)
    finally:
        third.kill()
