"""The run-now and backfill annotations as a user writes them, on the real API server with a running operator.

Each value is judged once: a refusal is one Event and one status write, and the
operator's own status write coming back as a watch event changes nothing. A
backfill runs past times only, and is called off by removing its annotation.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import time
from collections.abc import Iterator

import pytest

from tests.e2e.test_kubectl_plugin import plugin
from tests.e2e.test_operator import apply, condition, eventually, get, handler_doc, schedule_doc, ticks
from tests.support import controlplane, processes, scrape
from tests.support.operator import Operator

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"


@pytest.fixture
def probe_handler(tmp_path: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path) as handler:
        yield handler


@pytest.fixture
def metrics_port(system_kubeconfigs: dict[str, pathlib.Path], namespace: str, tmp_path: pathlib.Path) -> Iterator[int]:
    port = controlplane.free_port()
    log = tmp_path / "operator.log"
    running = Operator(system_kubeconfigs["operator"], log, "--namespace", namespace, metrics_port=port).start()
    yield port
    running.stop()
    print(running.output()[-5000:])


def status_writes(port: int) -> float:
    return scrape.total(f"http://127.0.0.1:{port}/metrics", "schedulezero_status_writes_total")


def events(cluster: controlplane.Cluster, namespace: str, reason: str) -> list[dict[str, object]]:
    listed = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in listed if e["reason"] == reason]


def annotate(cluster: controlplane.Cluster, namespace: str, name: str, annotation: str) -> None:
    cluster.kubectl("annotate", "sched", name, "-n", namespace, annotation, "--overwrite")


def test_a_bad_annotation_is_refused_once_and_stays_refused(
    cluster: controlplane.Cluster, namespace: str, metrics_port: int, probe_handler: processes.HandlerProcess
) -> None:
    apply(cluster, namespace, handler_doc(probe_handler.endpoint), schedule_doc("hourly", schedule="@hourly"))
    eventually(lambda: condition(get(cluster, namespace, "sched", "hourly"), "Ready")["status"] == "True")
    time.sleep(3)  # the first status writes settle
    annotate(cluster, namespace, "hourly", "schedulezero.io/backfill=not json")
    refused = eventually(lambda: (b := get(cluster, namespace, "sched", "hourly")["status"].get("backfill")) and b)
    assert refused["state"] == "Refused"
    assert "not a backfill request" in refused["message"]
    token = "t" * 100_000  # a run-now token too long to keep in status
    annotate(cluster, namespace, "hourly", f"schedulezero.io/run-now={token}")
    eventually(lambda: events(cluster, namespace, "RunNowRefused"))
    time.sleep(2)
    before = status_writes(metrics_port)
    time.sleep(10)  # a loop would write status every couple of seconds, and post Events
    assert status_writes(metrics_port) == before
    assert len(events(cluster, namespace, "BackfillRefused")) == 1
    assert [e["count"] for e in events(cluster, namespace, "RunNowRefused")] in ([1], [None])
    status = get(cluster, namespace, "sched", "hourly")["status"]
    assert len(status.get("lastRunNowToken", "")) < 100
    assert ticks(probe_handler, namespace, "hourly") == []


def test_a_backfill_of_future_times_is_refused_and_a_running_one_can_be_cancelled(
    cluster: controlplane.Cluster, namespace: str, metrics_port: int, probe_handler: processes.HandlerProcess
) -> None:
    created = datetime.datetime.now(datetime.UTC)
    apply(
        cluster,
        namespace,
        handler_doc(probe_handler.endpoint),
        schedule_doc("minutely", schedule="* * * * *", params={"seconds": 0.5}, successfulRunsHistoryLimit=100),
    )
    eventually(lambda: condition(get(cluster, namespace, "sched", "minutely"), "Ready")["status"] == "True")
    ahead = created + datetime.timedelta(hours=1)
    future = [
        "--from",
        f"{ahead:%Y-%m-%dT%H:%M:%SZ}",
        "--to",
        f"{ahead + datetime.timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
    ]
    refused = plugin(cluster, "backfill", "minutely", "-n", namespace, *future, check=False)
    assert refused.returncode == 1
    assert "is in the future: a backfill runs past times only" in refused.stderr
    assert "schedulezero.io/backfill" not in (
        get(cluster, namespace, "sched", "minutely")["metadata"].get("annotations") or {}
    )

    # Written with kubectl, the operator refuses the same range itself.
    request = json.dumps({"from": future[1], "to": future[3]}, separators=(",", ":"))
    annotate(cluster, namespace, "minutely", f"schedulezero.io/backfill={request}")
    backfill = eventually(lambda: (b := get(cluster, namespace, "sched", "minutely")["status"].get("backfill")) and b)
    assert backfill["state"] == "Refused"
    assert "is in the future" in backfill["message"]
    assert get(cluster, namespace, "sched", "minutely")["status"].get("active", []) == []

    # Two days of minutes is more than a backfill may run; the last 600 minutes of yesterday, at 0.5 s each, last
    # long enough to cancel.
    end = created.replace(second=0, microsecond=0) - datetime.timedelta(days=1)
    past = [
        "--from",
        f"{end - datetime.timedelta(minutes=599):%Y-%m-%dT%H:%M:%SZ}",
        "--to",
        f"{end:%Y-%m-%dT%H:%M:%SZ}",
    ]
    assert "backfill of 600 times requested" in plugin(cluster, "backfill", "minutely", "-n", namespace, *past).stdout
    eventually(lambda: len(ticks(probe_handler, namespace, "minutely")) >= 2)
    assert "backfill cancelled" in plugin(cluster, "backfill", "minutely", "-n", namespace, "--cancel").stdout
    cancelled = eventually(
        lambda: (b := get(cluster, namespace, "sched", "minutely")["status"]["backfill"])["state"] == "Cancelled" and b
    )
    time.sleep(3)
    cutoff = f"{end + datetime.timedelta(minutes=1):%Y-%m-%dT%H:%M:%S}"  # the backfill's times, not today's

    def backfilled() -> int:
        return len([t for t in ticks(probe_handler, namespace, "minutely") if t["scheduled"] < cutoff])

    ran = backfilled()
    assert cancelled["done"] <= ran <= cancelled["done"] + 1 < 600
    time.sleep(3)
    assert backfilled() == ran
    assert "unchanged" in plugin(cluster, "backfill", "minutely", "-n", namespace, "--cancel").stdout
