"""``kubectl get sched -o wide`` as the operator's status writes make it look."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from schedulezero_operator import kubeapi
from schedulezero_operator.sinks import ScheduleKey
from tests.e2e.test_operator import apply, schedule_doc
from tests.support import controlplane

pytestmark = pytest.mark.e2e


def last_duration(cluster: controlplane.Cluster, namespace: str, name: str) -> str:
    return str(
        cluster.kubectl(
            "get", "sched", name, "-n", namespace, "-o", "custom-columns=D:.status.lastRunDuration", "--no-headers"
        ).stdout.strip()
    )


async def test_last_duration_is_written_readable_and_cleared_when_the_last_run_has_none(
    cluster: controlplane.Cluster, namespace: str
) -> None:
    apply(cluster, namespace, schedule_doc("timed", schedule="0 * * * *"))
    now = datetime.datetime.now(datetime.UTC).isoformat()
    run: dict[str, Any] = {"runId": "r1", "scheduledTime": now, "outcome": "Succeeded", "durationSeconds": 0.012899}
    api = kubeapi.Api(await kubeapi.connect(str(cluster.kubeconfig)))
    try:
        sink = kubeapi.ScheduleStatusSink(api)
        await sink.write_status(ScheduleKey(namespace, "timed"), {"runs": [run]})
        assert last_duration(cluster, namespace, "timed") == "13ms"
        header, row = cluster.kubectl("get", "sched", "timed", "-n", namespace, "-o", "wide").stdout.splitlines()
        assert row.split()[header.split().index("LAST") + 1 :].count("13ms") == 1  # in its column, not 0.012899
        skipped = {"runId": "r2", "scheduledTime": now, "outcome": "Skipped"}
        await sink.write_status(ScheduleKey(namespace, "timed"), {"runs": [skipped, run]})
        assert last_duration(cluster, namespace, "timed") == "<none>"  # as the column showed before: the latest
    finally:
        await api.close()
