"""``kubectl schedulezero``: every verb through real kubectl (which finds the plugin on the PATH), against
the real API server and a running operator."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.test_operator import apply, condition, eventually, get, handler_doc, schedule_doc, ticks
from tests.support import controlplane, processes, scrape
from tests.support.operator import Operator

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"


@pytest.fixture
def operator(system_kubeconfigs: dict[str, pathlib.Path], namespace: str, tmp_path: pathlib.Path) -> Iterator[None]:
    running = Operator(system_kubeconfigs["operator"], tmp_path / "operator.log", "--namespace", namespace).start()
    yield
    running.stop()
    print(running.output()[-5000:])


@pytest.fixture
def probe_handler(tmp_path: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path) as handler:
        yield handler


def plugin(cluster: controlplane.Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``kubectl schedulezero ARGS``, kubectl finding ``kubectl-schedulezero`` on the PATH as users have it."""
    path = f"{pathlib.Path(sys.executable).parent}:{cluster.bin_dir}:{os.environ.get('PATH', '')}"
    return subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "schedulezero", *args],
        env={**os.environ, "PATH": path, "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        check=check,
    )


def test_each_verb_of_the_plugin(
    cluster: controlplane.Cluster, namespace: str, operator: None, probe_handler: processes.HandlerProcess
) -> None:
    apply(
        cluster,
        namespace,
        handler_doc(probe_handler.endpoint),
        schedule_doc("hourly", schedule="0 * * * *", successfulRunsHistoryLimit=10),
    )
    eventually(lambda: condition(get(cluster, namespace, "sched", "hourly"), "Ready")["status"] == "True")

    # run-now: one run, marked as such
    assert "run requested" in plugin(cluster, "run-now", "hourly", "-n", namespace).stdout
    eventually(lambda: [r for r in get(cluster, namespace, "sched", "hourly")["status"]["runs"]
                        if r.get("trigger") == "run-now" and r["outcome"] == "Succeeded"])  # fmt: skip

    # backfill: the three past hours, each once, under their own run ids; asking again changes nothing
    top = datetime.datetime.now(datetime.UTC).replace(minute=0, second=0, microsecond=0)
    first, last = top - datetime.timedelta(hours=3), top - datetime.timedelta(hours=1)
    span = ["--from", f"{first:%Y-%m-%dT%H:%M:%SZ}", "--to", f"{last:%Y-%m-%dT%H:%M:%SZ}"]
    assert "backfill of 3 times requested" in plugin(cluster, "backfill", "hourly", "-n", namespace, *span).stdout
    done = eventually(lambda: (b := get(cluster, namespace, "sched", "hourly")["status"].get("backfill"))
                      and b["state"] == "Complete" and b)  # fmt: skip
    assert (done["total"], done["done"]) == (3, 3)
    plugin(cluster, "backfill", "hourly", "-n", namespace, *span)
    time.sleep(3)
    seen = [datetime.datetime.fromisoformat(t["scheduled"]) for t in ticks(probe_handler, namespace, "hourly")]
    backfilled = sorted(f"{moment:%Y-%m-%dT%H:%M:%S}Z" for moment in seen if moment < top)
    assert backfilled == [f"{first + datetime.timedelta(hours=h):%Y-%m-%dT%H:%M:%S}Z" for h in range(3)]
    status = get(cluster, namespace, "sched", "hourly")["status"]
    assert sum(1 for r in status["runs"] if r.get("trigger") == "backfill") == 3

    # runs: the history as a table, with the trigger of each run
    table = plugin(cluster, "runs", "hourly", "-n", namespace).stdout
    assert table.splitlines()[0].split()[:3] == ["SCHEDULED", "OUTCOME", "ATTEMPTS"]
    assert table.count("backfill") == 3
    assert "run-now" in table
    assert "hourly" in plugin(cluster, "runs", "-A").stdout

    # suspend and resume: spec.suspend, and the Suspended condition follows
    plugin(cluster, "suspend", "hourly", "-n", namespace)
    assert get(cluster, namespace, "sched", "hourly")["spec"]["suspend"] is True
    eventually(lambda: condition(get(cluster, namespace, "sched", "hourly"), "Suspended")["status"] == "True")
    plugin(cluster, "resume", "hourly", "-n", namespace)
    assert get(cluster, namespace, "sched", "hourly")["spec"]["suspend"] is False

    # describe-handler: its replicas and methods
    described = plugin(cluster, "describe-handler", "probe", "-n", namespace).stdout
    assert "Replicas:   1 of 1 answering" in described
    assert any(line.startswith("tick ") for line in described.splitlines())

    # errors name what is wrong, and where
    missing = plugin(cluster, "run-now", "nope", "-n", namespace, check=False)
    assert missing.returncode == 1
    assert f"Schedule {namespace}/nope not found" in missing.stderr
    year = ["--from", f"{top - datetime.timedelta(days=365):%Y-%m-%dT%H:%M:%SZ}", "--to", span[3]]
    refused = plugin(cluster, "backfill", "hourly", "-n", namespace, *year, check=False)
    assert refused.returncode == 1
    assert "more than 1000 times" in refused.stderr


def requested_runs(port: int, trigger: str, outcome: str) -> float:
    """``schedulezero_schedule_requested_runs_total`` as the operator's /metrics shows it, summed over Schedules."""
    url = f"http://127.0.0.1:{port}/metrics"
    return scrape.total(url, "schedulezero_schedule_requested_runs_total", trigger=trigger, outcome=outcome)


def test_a_backfill_written_with_plain_kubectl_annotate_runs_and_the_operator_itself_refuses_one_too_large(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
    probe_handler: processes.HandlerProcess,
) -> None:
    """The README's kubectl column for backfill, with no plugin: the operator alone reads and checks the annotation."""
    port = controlplane.free_port()
    running = Operator(
        system_kubeconfigs["operator"], tmp_path / "operator.log", "--namespace", namespace, metrics_port=port
    ).start()
    try:
        apply(cluster, namespace, handler_doc(probe_handler.endpoint),
              schedule_doc("hourly", schedule="0 * * * *", successfulRunsHistoryLimit=10))  # fmt: skip
        eventually(lambda: condition(get(cluster, namespace, "sched", "hourly"), "Ready")["status"] == "True")
        top = datetime.datetime.now(datetime.UTC).replace(minute=0, second=0, microsecond=0)
        first, last = top - datetime.timedelta(hours=3), top - datetime.timedelta(hours=1)
        annotation = f'{{"from":"{first:%Y-%m-%dT%H:%M:%SZ}","to":"{last:%Y-%m-%dT%H:%M:%SZ}"}}'
        cluster.kubectl(
            "annotate", "sched", "hourly", "-n", namespace, f"schedulezero.io/backfill={annotation}", "--overwrite"
        )
        done = eventually(lambda: (b := get(cluster, namespace, "sched", "hourly")["status"].get("backfill"))
                          and b["state"] == "Complete" and b)  # fmt: skip
        assert (done["total"], done["done"]) == (3, 3)
        expected = [f"{first + datetime.timedelta(hours=h):%Y-%m-%dT%H:%M:%S}Z" for h in range(3)]

        def backfilled() -> list[str]:
            seen = [datetime.datetime.fromisoformat(t["scheduled"]) for t in ticks(probe_handler, namespace, "hourly")]
            return sorted(f"{moment:%Y-%m-%dT%H:%M:%S}Z" for moment in seen if moment < top)

        assert backfilled() == expected
        assert eventually(lambda: requested_runs(port, "backfill", "Succeeded") == 3)
        assert requested_runs(port, "backfill", "Failed") == 0

        # 1,001 hours: the plugin would refuse before writing; written with kubectl, the operator refuses it.
        start = top - datetime.timedelta(hours=1001)
        too_many = f'{{"from":"{start:%Y-%m-%dT%H:%M:%SZ}","to":"{last:%Y-%m-%dT%H:%M:%SZ}"}}'
        cluster.kubectl(
            "annotate", "sched", "hourly", "-n", namespace, f"schedulezero.io/backfill={too_many}", "--overwrite"
        )
        refused = eventually(lambda: (b := get(cluster, namespace, "sched", "hourly")["status"].get("backfill"))
                             and b["state"] == "Refused" and b)  # fmt: skip
        assert f"more than 1000 times between {start:%Y-%m-%dT%H:%M:%SZ} and" in refused["message"]
        assert (refused["total"], refused["done"]) == (0, 0)
        assert eventually(
            lambda: [
                e
                for e in json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
                if e["reason"] == "BackfillRefused" and "more than 1000 times" in e["message"]
            ]
        )
        cluster.kubectl("annotate", "sched", "hourly", "-n", namespace, "schedulezero.io/backfill-")  # removed
        time.sleep(3)
        assert backfilled() == expected  # nothing of the refused range ran
        assert get(cluster, namespace, "sched", "hourly")["status"]["backfill"]["state"] == "Refused"
        assert requested_runs(port, "backfill", "Succeeded") == 3
    finally:
        running.stop()
        print(running.output()[-5000:])
