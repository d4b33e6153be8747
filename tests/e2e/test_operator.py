"""The kopf operator against the real API server, with handlers as local processes."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from schedulezero_handler import client as client_
from schedulezero_operator import kubeapi
from tests.support import controlplane, processes, waiting
from tests.support.operator import Operator

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"
MANIFESTS = controlplane.REPO / "manifests"


@pytest.fixture
def operator_kubeconfig(system_kubeconfigs: dict[str, pathlib.Path]) -> pathlib.Path:
    """The operator's ServiceAccount, not an admin."""
    return system_kubeconfigs["operator"]


@pytest.fixture
def operator(operator_kubeconfig: pathlib.Path, namespace: str, tmp_path: pathlib.Path) -> Iterator[Operator]:
    running = Operator(operator_kubeconfig, tmp_path / "operator.log", "--namespace", namespace).start()
    yield running
    running.stop(signal.SIGKILL)
    print(running.output()[-5000:])  # captured: shown when the test failed


@pytest.fixture
def probe_handler(tmp_path: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path) as handler:
        yield handler


def apply(cluster: controlplane.Cluster, namespace: str, *documents: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))


def handler_doc(endpoint: str, name: str = "probe") -> dict[str, Any]:
    return {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": "Handler",
        "metadata": {"name": name},
        "spec": {"endpoint": endpoint},
    }


def schedule_doc(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": name},
        "spec": {"handler": "probe", "method": "tick", **spec},
    }


def get(cluster: controlplane.Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout))


def condition(schedule: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in schedule["status"]["conditions"] if c["type"] == type_)


def eventually(predicate: Callable[[], Any], *, timeout: float = 60.0) -> Any:
    """Until truthy; an object or status field that is not there yet only means "not yet"."""
    not_yet = (controlplane.ToolError, KeyError, IndexError, TypeError)
    return waiting.eventually(predicate, timeout=timeout, interval=0.3, ignoring=not_yet)


def ticks(handler: processes.HandlerProcess, namespace: str, name: str) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        async with client_.Client() as client:
            seen: list[dict[str, Any]] = await client.call(handler.endpoint, "ticks_seen", timeout=10)
            return seen

    return [t for t in asyncio.run(fetch()) if t["schedule"] == f"{namespace}/{name}"]


def succeeded(status: dict[str, Any]) -> int:
    return int(status.get("counters", {}).get("succeeded", 0))


def test_runs_show_in_status_and_in_kubectl(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, probe_handler: processes.HandlerProcess
) -> None:
    apply(cluster, namespace, handler_doc(probe_handler.endpoint), schedule_doc("every2", schedule="@every 2s"))
    status = eventually(lambda: (s := get(cluster, namespace, "sched", "every2")["status"]) and succeeded(s) >= 2 and s)
    run = status["runs"][0]
    assert run["outcome"] == "Succeeded"
    assert run["result"].startswith('"')  # tick returns its nominal time, as JSON
    assert status["conditions"][0]["type"] == "Ready"
    assert status["conditions"][0]["status"] == "True"
    assert status["observedGeneration"] == 1

    _, row = cluster.kubectl("get", "sched", "every2", "-n", namespace).stdout.splitlines()
    cells = row.split()
    assert cells[:3] == ["every2", "@every", "2s"]
    assert cells[3:6] == ["false", "True", "Scheduled"]
    assert cells[7] == "Succeeded"
    assert cells[8].endswith("Z")  # NEXT RUN

    handler_status = eventually(
        lambda: (s := get(cluster, namespace, "hdl", "probe")["status"])["state"] == "Active" and s
    )
    assert "tick" in [m["name"] for m in handler_status["methods"]]
    assert handler_status["conditions"][0]["status"] == "True"
    _, hdl_row = cluster.kubectl("get", "hdl", "probe", "-n", namespace).stdout.splitlines()
    assert hdl_row.split()[1:4] == [probe_handler.endpoint, "Active", "True"]

    assert operator.stop() == 0  # SIGTERM: in-flight runs finish, the last status is written
    final = get(cluster, namespace, "sched", "every2")["status"]
    assert succeeded(final) == len(ticks(probe_handler, namespace, "every2"))  # exactly the calls recorded


def test_invalid_schedule_is_flagged_and_the_valid_one_runs(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, probe_handler: processes.HandlerProcess
) -> None:
    # What the parser refuses, the API server refuses at apply (tests/e2e/test_validation_parity.py).
    refused = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(schedule_doc("bad", schedule="61 * * * *")), check=False
    )
    assert refused.returncode != 0
    assert 'spec.schedule: Invalid value: "61 * * * *": the minute field must be' in refused.stderr
    apply(
        cluster,
        namespace,
        handler_doc(probe_handler.endpoint),
        schedule_doc("large", schedule="@every 1s", method="echo", params={"value": "x" * 70_000}),
        schedule_doc("good", schedule="@every 1s"),
    )
    # Params the API server stores but no run could send well: refused at once, not at every run.
    large = eventually(
        lambda: (c := condition(get(cluster, namespace, "sched", "large"), "Ready"))["reason"] != "StatusPending" and c
    )
    assert (large["status"], large["reason"]) == ("False", "InvalidSchedule")
    assert large["message"] == "spec.params is 70012 bytes of JSON, more than the 65536 allowed"
    events = eventually(
        lambda: [
            e
            for e in json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
            if e["involvedObject"]["name"] == "large" and e["reason"] == "InvalidSchedule"
        ]
    )
    assert events[0]["type"] == "Warning"
    eventually(lambda: succeeded(get(cluster, namespace, "sched", "good")["status"]) >= 2)


def test_suspend_resume_run_now_change_and_delete(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, probe_handler: processes.HandlerProcess
) -> None:
    apply(
        cluster,
        namespace,
        handler_doc(probe_handler.endpoint),
        schedule_doc("life", schedule="@every 1s", catchUpPolicy="Skip"),
    )
    eventually(lambda: succeeded(get(cluster, namespace, "sched", "life")["status"]) >= 1)

    cluster.kubectl("patch", "sched", "life", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    eventually(lambda: condition(get(cluster, namespace, "sched", "life"), "Suspended")["status"] == "True")
    paused = len(ticks(probe_handler, namespace, "life"))
    time.sleep(2.5)
    assert len(ticks(probe_handler, namespace, "life")) <= paused + 1  # at most a run already in flight

    done = subprocess.run(
        [processes.SCHEDULEZERO, "run-now", "life", "-n", namespace],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        check=True,
    )
    token = done.stdout.split("token ")[1].rstrip(")\n")
    eventually(lambda: get(cluster, namespace, "sched", "life")["status"].get("lastRunNowToken") == token)
    eventually(lambda: len(ticks(probe_handler, namespace, "life")) == paused + 1)  # once, even while suspended

    cluster.kubectl("patch", "sched", "life", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    resumed = len(ticks(probe_handler, namespace, "life"))
    eventually(lambda: len(ticks(probe_handler, namespace, "life")) >= resumed + 2)

    cluster.kubectl(
        "patch", "sched", "life", "-n", namespace, "--type=merge", "-p", '{"spec": {"schedule": "0 0 1 1 *"}}'
    )
    status = eventually(
        lambda: (s := get(cluster, namespace, "sched", "life")["status"]) and s.get("observedGeneration") == 4 and s
    )
    assert status["nextRunTime"].startswith(f"{datetime.datetime.now(datetime.UTC).year + 1}-01-01T00:00:00")
    assert status["runs"]  # history kept

    cluster.kubectl(
        "patch", "sched", "life", "-n", namespace, "--type=merge", "-p", '{"spec": {"schedule": "@every 1s"}}'
    )
    eventually(lambda: len(ticks(probe_handler, namespace, "life")) >= resumed + 4)
    started = time.monotonic()
    cluster.kubectl("delete", "sched", "life", "-n", namespace, "--timeout=20s")
    assert time.monotonic() - started < 10  # no finalizer to wait for
    time.sleep(1.0)
    after_delete = len(ticks(probe_handler, namespace, "life"))
    time.sleep(2.5)
    assert len(ticks(probe_handler, namespace, "life")) == after_delete


def test_sigkill_and_restart_catch_up_without_double_runs(
    cluster: controlplane.Cluster,
    namespace: str,
    operator_kubeconfig: pathlib.Path,
    probe_handler: processes.HandlerProcess,
    tmp_path: pathlib.Path,
) -> None:
    apply(
        cluster,
        namespace,
        handler_doc(probe_handler.endpoint),
        schedule_doc(
            "crash", schedule="@every 1s", catchUpPolicy="All", concurrencyPolicy="Allow", failedRunsHistoryLimit=50
        ),
    )
    first = Operator(operator_kubeconfig, tmp_path / "first.log", "--namespace", namespace).start()
    eventually(lambda: succeeded(get(cluster, namespace, "sched", "crash")["status"]) >= 3)
    first.stop(signal.SIGKILL)
    time.sleep(3.0)
    # The same Leases: it takes the shard over once the killed one's Lease expires, and catches up.
    second = Operator(
        operator_kubeconfig, tmp_path / "second.log", "--namespace", namespace, lease_prefix=first.lease_prefix
    ).start()
    try:
        before = len(ticks(probe_handler, namespace, "crash"))
        eventually(lambda: len(ticks(probe_handler, namespace, "crash")) >= before + 6)
    finally:
        assert second.stop() == 0, second.output()[-3000:]
    seen = sorted(datetime.datetime.fromisoformat(t["scheduled"]) for t in ticks(probe_handler, namespace, "crash"))
    assert len(seen) == len(set(seen)), "a run was executed twice at the handler"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(seen)]
    log = "\n".join(line for line in second.output().splitlines() if "catching up" in line or "crash" in line)
    runs = get(cluster, namespace, "sched", "crash")["status"]["runs"]
    assert max(gaps) == pytest.approx(1.0, abs=0.01), f"{seen}\n{log[-3000:]}\n{runs}"  # catchUpPolicy All
    assert get(cluster, namespace, "sched", "crash")["status"]["counters"]["missed"] == 0


def test_api_server_restart_under_a_running_operator(
    cluster: controlplane.Cluster,
    local_control_plane: controlplane.LocalControlPlane | None,
    namespace: str,
    operator: Operator,
    probe_handler: processes.HandlerProcess,
) -> None:
    if local_control_plane is None:
        pytest.skip("restarting the API server needs the local control plane, not SCHEDULEZERO_KUBECONFIG")
    apply(cluster, namespace, handler_doc(probe_handler.endpoint), schedule_doc("steady", schedule="@every 1s"))
    eventually(lambda: succeeded(get(cluster, namespace, "sched", "steady")["status"]) >= 2)
    local_control_plane.restart_apiserver()
    apply(cluster, namespace, schedule_doc("newcomer", schedule="@every 1s"))
    eventually(lambda: succeeded(get(cluster, namespace, "sched", "newcomer")["status"]) >= 2, timeout=90)
    before = succeeded(get(cluster, namespace, "sched", "steady")["status"])
    eventually(lambda: succeeded(get(cluster, namespace, "sched", "steady")["status"]) >= before + 2)
    assert operator.popen is not None
    assert operator.popen.poll() is None


def test_a_handler_that_goes_down_and_comes_back(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, tmp_path: pathlib.Path
) -> None:
    port = controlplane.free_port()
    handler = processes.start_handler(PROBE, tmp_path, port=port)
    apply(
        cluster,
        namespace,
        handler_doc(handler.endpoint),
        schedule_doc("dependent", schedule="@every 1s", timeoutSeconds=1, retry={"maxAttempts": 1}),
    )
    eventually(lambda: get(cluster, namespace, "hdl", "probe")["status"]["state"] == "Active")
    handler.kill()
    failed = eventually(
        lambda: [r for r in get(cluster, namespace, "sched", "dependent")["status"]["runs"] if r["outcome"] == "Failed"]
    )
    assert failed[0]["error"]["type"] in ("Unavailable", "DeadlineExceeded")
    assert "tcp://127.0.0.1" in failed[0]["error"]["message"]
    status = eventually(
        lambda: (s := get(cluster, namespace, "hdl", "probe")["status"])["state"] == "Unreachable" and s
    )
    assert status["conditions"][0]["status"] == "False"
    eventually(
        lambda: any(
            e["reason"] == "HandlerUnreachable"
            for e in json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        )
    )
    with processes.running_handler(PROBE, tmp_path, port=port):
        eventually(lambda: get(cluster, namespace, "hdl", "probe")["status"]["state"] == "Active")
        eventually(lambda: get(cluster, namespace, "sched", "dependent")["status"]["runs"][0]["outcome"] == "Succeeded")


def test_a_curve_handler_is_called_with_the_keys_of_its_secret(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, tmp_path: pathlib.Path
) -> None:
    keys = tmp_path / "keys"
    curve_args = processes.curve_handler_args(keys, "operator", stranger=True)
    with processes.running_handler(PROBE, tmp_path, *curve_args) as handler:
        cluster.kubectl(
            "create", "secret", "generic", "probe-curve", "-n", namespace,
            f"--from-file=server.key={keys / 'server.key'}",
            f"--from-file=client.key={keys / 'operator.key'}",
            f"--from-file=client.key_secret={keys / 'operator.key_secret'}",
        )  # fmt: skip
        secured = handler_doc(handler.endpoint)
        secured["spec"]["curve"] = {"secretName": "probe-curve"}
        apply(cluster, namespace, secured, schedule_doc("secure", schedule="@every 1s"))
        eventually(lambda: succeeded(get(cluster, namespace, "sched", "secure")["status"]) >= 2)
        assert get(cluster, namespace, "hdl", "probe")["status"]["state"] == "Active"

        # The same handler refuses a client whose key it does not know.
        cluster.kubectl("delete", "secret", "probe-curve", "-n", namespace)
        cluster.kubectl(
            "create", "secret", "generic", "probe-curve", "-n", namespace,
            f"--from-file=server.key={keys / 'server.key'}",
            f"--from-file=client.key_secret={keys / 'stranger.key_secret'}",
        )  # fmt: skip
        cluster.kubectl("label", "hdl", "probe", "-n", namespace, "rotated=yes")  # a Handler change re-reads the Secret
        failed = eventually(
            lambda: [
                r for r in get(cluster, namespace, "sched", "secure")["status"]["runs"] if r["outcome"] == "Failed"
            ]
        )
        assert failed[0]["error"]["type"] == "Unauthorized"


def test_the_namespaced_rbac_variant_is_enough(
    cluster: controlplane.Cluster, namespace: str, probe_handler: processes.HandlerProcess, tmp_path: pathlib.Path
) -> None:
    """The operator runs under the Role of manifests/rbac/namespace-role.yaml alone, with no cluster-wide rights."""
    account = f"ns-operator-{namespace}"
    cluster.kubectl("apply", "-f", str(MANIFESTS / "namespace.yaml"))
    cluster.kubectl("create", "serviceaccount", account, "-n", "schedulezero-system")
    documents = list(yaml.safe_load_all((MANIFESTS / "rbac" / "namespace-role.yaml").read_text()))
    for document in documents:
        if document["kind"] == "RoleBinding" and document["metadata"]["name"] == "schedulezero-operator":
            document["subjects"][0]["name"] = account
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents))
    election = list(yaml.safe_load_all((MANIFESTS / "rbac" / "election.yaml").read_text()))
    for document in election:  # a Role in the operator's own namespace only: it still elects
        document["metadata"]["name"] = f"{account}-election"
        if document["kind"] == "RoleBinding":
            document["roleRef"]["name"] = f"{account}-election"
            document["subjects"][0]["name"] = account
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(election))
    kubeconfig = cluster.kubeconfig_for(account, "schedulezero-system", tmp_path / "kubeconfig")

    operator = Operator(kubeconfig, tmp_path / "operator.log", "--namespace", namespace).start()
    try:
        apply(cluster, namespace, handler_doc(probe_handler.endpoint), schedule_doc("scoped", schedule="@every 1s"))
        eventually(lambda: succeeded(get(cluster, namespace, "sched", "scoped")["status"]) >= 2)
        eventually(lambda: get(cluster, namespace, "hdl", "probe")["status"]["state"] == "Active")
    finally:
        assert operator.stop() == 0, operator.output()[-3000:]
    assert "Forbidden" not in operator.output()


CONDITIONS = {
    # name: (extra spec, the Ready status and reason `kubectl get` shows, Suspended, Completed)
    "suspended": ({"schedule": "@every 1s", "suspend": True}, ("True", "Scheduled"), "True", "False"),
    "handler-down": ({"schedule": "@every 1s", "handler": "down"}, ("False", "HandlerUnreachable"), "False", "False"),
    "no-method": ({"schedule": "@hourly", "method": "nope"}, ("False", "MethodNotFound"), "False", "False"),
    "bad-params": (
        {"schedule": "@hourly", "method": "add", "params": {"b": 1}}, ("False", "InvalidParams"), "False", "False"
    ),
    "never-fires": ({"schedule": "0 0 30 2 *"}, ("False", "NoMatchingTime"), "False", "True"),
    "run-at-past": ({"runAt": "2020-01-01T00:00:00Z"}, ("False", "RunAtPassed"), "False", "True"),
    "ended": (
        {"schedule": "@hourly", "startTime": "2020-01-01T00:00:00Z", "endTime": "2020-02-01T00:00:00Z"},
        ("False", "EndTimeReached"), "False", "True",
    ),
    "fine": ({"schedule": "@hourly"}, ("True", "Scheduled"), "False", "False"),
}  # fmt: skip


def test_conditions_say_whether_each_schedule_can_run_and_kubectl_get_shows_why(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, probe_handler: processes.HandlerProcess
) -> None:
    nowhere = f"tcp://127.0.0.1:{controlplane.free_port()}"
    documents = [handler_doc(probe_handler.endpoint), handler_doc(nowhere, name="down")]
    documents += [schedule_doc(name, **spec) for name, (spec, *_) in CONDITIONS.items()]
    apply(cluster, namespace, *documents)

    def shown() -> dict[str, tuple[str, str]]:
        rows = cluster.kubectl("get", "sched", "-n", namespace, "--no-headers", "-o",
                               "custom-columns=NAME:.metadata.name,READY:.status.conditions[?(@.type=='Ready')].status,"
                               "REASON:.status.conditions[?(@.type=='Ready')].reason").stdout.split("\n")  # fmt: skip
        return {row.split()[0]: (row.split()[1], row.split()[2]) for row in rows if row.strip()}

    expected = {name: ready for name, (_, ready, *_) in CONDITIONS.items()}
    eventually(lambda: shown() == expected, timeout=30)
    table = cluster.kubectl("get", "sched", "-n", namespace).stdout
    assert "REASON" in table.splitlines()[0]
    for name, (_, (ready, reason), suspended, completed) in CONDITIONS.items():
        found = get(cluster, namespace, "sched", name)
        assert condition(found, "Suspended")["status"] == suspended, name
        assert condition(found, "Completed")["status"] == completed, name
        row = next(line for line in table.splitlines() if line.startswith(name + " "))
        assert f" {ready} " in row, row
        assert f" {reason} " in row, row
    rejected = condition(get(cluster, namespace, "sched", "bad-params"), "Ready")
    assert "lacks the required parameter 'a'" in rejected["message"]


def test_json_logs_a_liveness_endpoint_and_watches_that_keep_delivering_after_renewal(
    cluster: controlplane.Cluster,
    namespace: str,
    operator_kubeconfig: pathlib.Path,
    probe_handler: processes.HandlerProcess,
    tmp_path: pathlib.Path,
) -> None:
    liveness = controlplane.free_port()
    options = ("--log-format", "json", "--liveness-port", str(liveness), "--watch-timeout", "2")
    running = Operator(operator_kubeconfig, tmp_path / "json.log", "--namespace", namespace, extra=options).start()
    try:
        url = f"http://127.0.0.1:{liveness}/healthz"
        health = waiting.eventually(lambda: _get(url), timeout=30, ignoring=(OSError,))
        assert health == 200
        time.sleep(7)  # the watches, renewed every 2 s, have been renewed a few times by now
        apply(cluster, namespace, handler_doc(probe_handler.endpoint), schedule_doc("late", schedule="@every 1s"))
        eventually(lambda: succeeded(get(cluster, namespace, "sched", "late")["status"]) >= 1, timeout=30)
    finally:
        assert running.stop() == 0
    lines = [line for line in running.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line: one JSON object, nothing else
    assert any("shard 0 acquired" in record.get("message", "") for record in records), lines[:5]
    assert all({"message", "timestamp"} <= record.keys() for record in records), records[:3]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


async def test_like_events_are_held_back_and_the_next_one_says_how_many(
    cluster: controlplane.Cluster, namespace: str
) -> None:
    api = kubeapi.Api(await kubeapi.connect(str(cluster.kubeconfig)))
    recorder = kubeapi.EventRecorder(api, interval=2.0, instance="test-recorder")
    recorder.start()
    ref = kubeapi.ObjectRef("Schedule", namespace, "noisy", "")
    try:
        for number in range(5):
            recorder.record(ref, warning=True, reason="RunFailed", message=f"failure {number}")
        await asyncio.sleep(2.3)
        recorder.record(ref, warning=True, reason="RunFailed", message="failure 5")
        await asyncio.sleep(1.0)
    finally:
        await recorder.stop()
        await api.close()
    listed = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    posted = sorted(
        (e for e in listed if e["involvedObject"]["name"] == "noisy"), key=lambda e: e["metadata"]["creationTimestamp"]
    )
    assert [e["message"] for e in posted] == ["failure 0", "failure 5 (4 more like this in the last 2 s)"]
    assert [e["count"] for e in posted] == [1, 5]
    assert {e["reportingInstance"] for e in posted} == {"test-recorder"}
