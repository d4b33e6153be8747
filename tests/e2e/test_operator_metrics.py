"""The operator's own ``/metrics`` options, from its command line to a scrape, with the real API server."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.e2e.test_operator import apply, eventually, handler_doc, schedule_doc, ticks
from tests.support import controlplane, processes, scrape
from tests.support.operator import Operator

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"
COUNT = "schedulezero_schedule_run_duration_seconds_count"


@pytest.fixture
def probe_handler(tmp_path: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path) as handler:
        yield handler


@pytest.mark.parametrize("per_schedule", [False, True], ids=["default", "per-schedule-histograms"])
def test_run_durations_are_per_handler_and_method_and_per_schedule_only_when_asked(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    probe_handler: processes.HandlerProcess,
    per_schedule: bool,
) -> None:
    port = controlplane.free_port()
    option = ("--per-schedule-histograms",) if per_schedule else ()
    operator = Operator(
        system_kubeconfigs["operator"],
        tmp_path / "operator.log",
        "--namespace",
        namespace,
        metrics_port=port,
        extra=option,
    ).start()
    url = f"http://127.0.0.1:{port}/metrics"
    handler = f"{namespace}/probe"
    try:
        apply(cluster, namespace, handler_doc(probe_handler.endpoint), schedule_doc("tick", schedule="@every 1s"))
        eventually(lambda: len(ticks(probe_handler, namespace, "tick")) >= 3)  # /metrics is served by then
        eventually(lambda: scrape.total(url, COUNT, handler=handler, method="tick") >= 2)
        own = scrape.total(url, COUNT, handler=handler, method="tick", namespace=namespace, schedule="tick")
        assert (own >= 2) is per_schedule
    finally:
        operator.stop()
        print(operator.output()[-4000:])
