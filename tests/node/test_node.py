"""ScheduleZero's pods on a real node, installed by ``helm install`` as a user installs them.

In file order, on one installation: every pod Ready through its own probes,
the operators authenticated in-cluster and elected by pod name; Schedules
every second running on all three vendor handler pods over the EndpointSlices
the controller writes, encrypted with the keys the operator issued; the PodDisruptionBudget refusing an eviction; faults
(a deleted operator pod, a SIGKILLed operator process, a deleted handler pod,
a ``helm upgrade`` rolling both Deployments) with every nominal time in the
window run exactly once, judged by the handler pods' delivery journals; a
handler pod deleted with a call in flight answering it before it goes; and
``helm uninstall`` removing the pods but not the CRDs or the Schedules.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from tests.node.conftest import HANDLER, SHOP, SYSTEM, Installed
from tests.support import controlplane, deliveries, prometheus
from tests.support.waiting import eventually

pytestmark = pytest.mark.node

OPERATOR = "app.kubernetes.io/component=operator"
CONDUCTOR = "app.kubernetes.io/component=conductor"
HANDLER_PODS = f"app.kubernetes.io/instance={HANDLER}"
SCHEDULES = 6
"""Schedules ``@every 1s`` on the vendor handler: enough run ids to reach all three pods every second."""


def ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def names(pods: list[dict[str, Any]]) -> list[str]:
    return sorted(pod["metadata"]["name"] for pod in pods)


def all_ready(installed: Installed, namespace: str, selector: str, count: int) -> list[dict[str, Any]] | None:
    """The pods, once exactly ``count`` of them exist and every one is Ready."""
    pods = installed.pods(namespace, selector)
    return pods if len(pods) == count and all(ready(p) for p in pods) else None


def leases(installed: Installed) -> dict[str, str]:
    """Every Lease of the release namespace, by name, with its holder."""
    items = installed.kubectl_json("get", "leases", "-n", SYSTEM)["items"]
    assert isinstance(items, list)
    return {lease["metadata"]["name"]: lease["spec"].get("holderIdentity") or "" for lease in items}


def shard_holders(installed: Installed) -> dict[str, str]:
    return {name: holder for name, holder in leases(installed).items() if "-shard-" in name}


def journals(installed: Installed) -> dict[str, list[deliveries.Delivery]]:
    """Each handler pod's deliveries, by pod name, including pods since deleted."""
    return {path.stem: deliveries.read(path) for path in sorted(installed.journal.glob("*.jsonl"))}


def by_run(found: list[deliveries.Delivery]) -> set[tuple[str, str]]:
    return set(deliveries.by_run(found, prefix=f"{SHOP}/beat-"))


def schedules_list() -> str:
    documents = [
        {
            "apiVersion": "schedulezero.io/v1alpha1",
            "kind": "Schedule",
            "metadata": {"name": f"beat-{i}", "namespace": SHOP},
            "spec": {"handler": HANDLER, "method": "status", "schedule": "@every 1s", "catchUpPolicy": "All"},
        }
        for i in range(SCHEDULES)
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})


def operators_settled(installed: Installed) -> bool:
    """Two operator pods Ready, and every shard held by one of them."""
    pods = all_ready(installed, SYSTEM, OPERATOR, 2)
    if pods is None:
        return False
    holders = shard_holders(installed)
    return bool(holders) and all(any(h.startswith(p) for p in names(pods)) for h in holders.values())


def test_every_pod_is_ready_through_its_probes_and_the_operators_elect_by_pod_name(installed: Installed) -> None:
    operators = eventually(lambda: all_ready(installed, SYSTEM, OPERATOR, 2), timeout=120)
    eventually(lambda: all_ready(installed, SYSTEM, CONDUCTOR, 1), timeout=120)
    eventually(lambda: all_ready(installed, SHOP, HANDLER_PODS, 3), timeout=120)
    for pod in operators:
        # The ServiceAccount's token, mounted by the kubelet, is what the operator authenticates with.
        assert pod["spec"]["serviceAccountName"] == "schedulezero-operator"
        assert pod["spec"]["nodeName"] == "schedulezero-node"
    # The replicas elect under their pod names (the downward API), in the release namespace's Leases.
    eventually(lambda: operators_settled(installed), timeout=120)
    members = [name for name in leases(installed) if "-member-" in name]
    for pod in names(operators):
        assert any(pod in member for member in members), (pod, members)
    # The shards spread over both replicas.
    eventually(lambda: len(set(shard_holders(installed).values())) == 2, timeout=120)

    def handler_three_of_three() -> bool:
        status = installed.kubectl_json("get", "handlers.schedulezero.io", HANDLER, "-n", SHOP).get("status") or {}
        assert isinstance(status, dict)
        return status.get("replicas") == 3 and status.get("readyReplicas") == 3

    # The Handler counts the pods behind its Service from the EndpointSlices the controller writes.
    eventually(handler_three_of_three, timeout=120)


def test_schedules_every_second_run_on_all_three_handler_pods(installed: Installed) -> None:
    installed.cluster.kubectl("apply", "-f", "-", input=schedules_list())
    handler_pods = names(installed.pods(SHOP, HANDLER_PODS))

    def every_pod_ran() -> bool:
        found = journals(installed)
        return all(any(d.schedule and d.answer == "run" for d in found.get(pod, [])) for pod in handler_pods)

    eventually(every_pod_ran, timeout=120, interval=1)
    for i in range(SCHEDULES):
        eventually(
            lambda i=i: installed.kubectl_json("get", "sched", f"beat-{i}", "-n", SHOP)["status"],  # type: ignore[misc]
            timeout=60,
            ignoring=(KeyError,),
        )
    # The conductor, in its pod, scrapes each handler pod (pod IPs are reachable from the node).
    conductor = installed.pods(SYSTEM, CONDUCTOR)[0]
    metrics = f"http://{conductor['status']['podIP']}:9465/metrics"

    def scraped_every_pod() -> bool:
        with urllib.request.urlopen(metrics, timeout=5) as response:
            text = response.read().decode()
        lines = text.splitlines()
        up = [line for line in lines if line.startswith("schedulezero_handler_up{") and line.endswith(" 1.0")]
        return all(any(f'pod="{pod}"' in line for line in up) for pod in handler_pods)

    eventually(scraped_every_pod, timeout=90, interval=2, ignoring=(OSError,))


DASHBOARD = controlplane.REPO / "monitoring" / "grafana" / "schedulezero-dashboard.json"
SCENARIO = [
    # The failures panel and the suspended-schedules panel each get something of their own to show.
    {"name": "failing", "spec": {"method": "process_and_upload", "params": {"data_source": "/etc"},
                                 "schedule": "@every 5s", "retry": {"maxAttempts": 1}}},
    {"name": "paused", "spec": {"method": "status", "schedule": "@every 1s", "suspend": True}},
]  # fmt: skip


def panel_queries() -> list[tuple[str, str]]:
    """(title, PromQL) of the dashboard's panels, its variables set as a user here would: this namespace, acme."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expression = target.get("expr") or ""
            if expression.strip():
                for variable, value in {"rate_interval": "30s", "interval": "5s", "range": "1h"}.items():
                    expression = re.sub(rf"\$\{{?__{variable}\}}?", value, expression)
                expression = re.sub(r"\$\{?namespace(:[a-z]+)?\}?", SHOP, expression)
                expression = re.sub(r"\$\{?handler(:[a-z]+)?\}?", f"{SHOP}/{HANDLER}", expression)
                found.append((f"{panel['title']} ({target.get('refId', 'A')})", expression))
    return found


def real_data(expression: str, result: list[dict[str, Any]]) -> bool:
    """A series with every label the query groups by, and a number (not a quantile's NaN)."""
    grouped = {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expression) for label in group.split(",")}
    grouped -= {"", "le"}
    return any(
        all(series["metric"].get(label) for label in grouped) and math.isfinite(float(series["value"][1]))
        for series in result
    )


def test_the_installed_charts_encrypt_every_call_by_default(installed: Installed) -> None:
    """Installed with their defaults, the charts call the vendor handler and the conductor with keys the operator
    issued (the runs above succeeded with them); a client without keys is refused by a handler pod."""
    for namespace, handler in ((SHOP, HANDLER), (SYSTEM, "conductor")):
        status = installed.kubectl_json("get", "hdl", handler, "-n", namespace)["status"]
        encrypted = next(c for c in status["conditions"] if c["type"] == "Encrypted")
        assert (encrypted["status"], encrypted["reason"]) == ("True", "KeysIssued"), encrypted
    labels = installed.kubectl_json("get", "secret", f"{HANDLER}-curve", "-n", SHOP)["metadata"]["labels"]
    assert labels["schedulezero.io/curve"] == "server"
    pod = installed.pods(SHOP, HANDLER_PODS)[0]
    command = [str(pathlib.Path(sys.executable).parent / "schedulezero"), "call"]
    command += [f"tcp://{pod['status']['podIP']}:5555", "sys.health", "--timeout", "3"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0, refused.stdout


def test_a_prometheus_on_the_host_scrapes_the_pods_and_the_dashboard_shows_their_data(
    installed: Installed, tmp_path: pathlib.Path
) -> None:
    operators = eventually(lambda: all_ready(installed, SYSTEM, OPERATOR, 2), timeout=120)
    conductor = eventually(lambda: all_ready(installed, SYSTEM, CONDUCTOR, 1), timeout=120)[0]
    # The job names the chart's ServiceMonitor gives, which the alert rules and the dashboard expect.
    jobs = {
        "schedulezero-operator": [f"{pod['status']['podIP']}:9464" for pod in operators],
        "schedulezero-conductor": [f"{conductor['status']['podIP']}:9465"],
    }
    for schedule in SCENARIO:
        document = {
            "apiVersion": "schedulezero.io/v1alpha1",
            "kind": "Schedule",
            "metadata": {"name": schedule["name"], "namespace": SHOP},
            "spec": {"handler": HANDLER, **schedule["spec"]},  # type: ignore[dict-item]
        }
        installed.cluster.kubectl("apply", "-f", "-", input=json.dumps(document))
    server = prometheus.Prometheus(tmp_path, jobs)
    try:
        eventually(lambda: server.value("sum(up)") == 3, timeout=60, interval=1)
        queries = panel_queries()
        assert len(queries) >= 20

        def empty() -> list[str]:
            return [title for title, expression in queries if not real_data(expression, server.query(expression))]

        try:
            eventually(lambda: not empty(), timeout=120, interval=2)
        except AssertionError:
            raise AssertionError(f"panels without data from the pods: {empty()}") from None
    finally:
        server.stop()


def evict(
    installed: Installed, pod: str, *, namespace: str = SYSTEM, dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace},
        **({"deleteOptions": {"dryRun": ["All"]}} if dry_run else {}),
    }
    return installed.cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
        input=json.dumps(eviction), check=False,
    )  # fmt: skip


def test_the_disruption_budget_refuses_to_evict_the_second_operator(installed: Installed) -> None:
    eventually(lambda: operators_settled(installed), timeout=120)
    first, second = names(installed.pods(SYSTEM, OPERATOR))
    # Allowed once the disruption controller has counted both Ready (an eviction it refuses changes nothing).
    eventually(lambda: evict(installed, first).returncode == 0, timeout=60, interval=1)
    refused = evict(installed, second)
    assert refused.returncode != 0
    assert "disruption budget" in refused.stderr, refused.stderr
    # Once the first one's replacement is Ready, the budget allows one again.
    eventually(lambda: operators_settled(installed), timeout=120)
    eventually(lambda: evict(installed, second, dry_run=True).returncode == 0, timeout=60, interval=1)


def test_the_handler_chart_s_disruption_budget_lets_one_of_three_pods_go_at_a_time(installed: Installed) -> None:
    eventually(lambda: all_ready(installed, SHOP, HANDLER_PODS, 3), timeout=120)
    first, second, _ = names(installed.pods(SHOP, HANDLER_PODS))
    eventually(lambda: evict(installed, first, namespace=SHOP).returncode == 0, timeout=60, interval=1)
    refused = evict(installed, second, namespace=SHOP)
    assert refused.returncode != 0
    assert "disruption budget" in refused.stderr, refused.stderr
    eventually(lambda: all_ready(installed, SHOP, HANDLER_PODS, 3), timeout=120, interval=1)


def container_pid(installed: Installed, pod: dict[str, Any]) -> int:
    """The host PID of the pod's first container, from containerd."""
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    for line in installed.local.ctr("tasks", "ls").stdout.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == container:
            return int(pid)
    raise AssertionError(f"no task for container {container}")


def test_faults_and_an_upgrade_leave_every_time_in_the_window_run_exactly_once(installed: Installed) -> None:
    kubectl = installed.cluster.kubectl
    eventually(lambda: operators_settled(installed), timeout=120)
    eventually(lambda: all_ready(installed, SHOP, HANDLER_PODS, 3), timeout=120)
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=2)
    time.sleep(3)
    faults = []

    # 1. kubectl delete pod of a replica holding shards.
    holder = sorted(shard_holders(installed).values())[0]
    victim = next(p for p in names(installed.pods(SYSTEM, OPERATOR)) if holder.startswith(p))
    kubectl("delete", "pod", victim, "-n", SYSTEM, "--wait=false")
    faults.append(f"deleted operator {victim}")
    eventually(lambda: operators_settled(installed), timeout=180)

    # 2. SIGKILL of an operator container's process: the kubelet restarts the container.
    pod = installed.pods(SYSTEM, OPERATOR)[0]
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    os.kill(container_pid(installed, pod), signal.SIGKILL)
    faults.append(f"SIGKILLed operator {pod['metadata']['name']}")

    def restarted() -> bool:
        now = installed.kubectl_json("get", "pod", pod["metadata"]["name"], "-n", SYSTEM)
        statuses = now["status"]["containerStatuses"]
        return bool(statuses[0]["restartCount"] > restarts)

    eventually(restarted, timeout=120, interval=1)
    eventually(lambda: operators_settled(installed), timeout=180)

    # 3. kubectl delete pod of a handler pod while runs keep arriving.
    handler_pod = names(installed.pods(SHOP, HANDLER_PODS))[0]
    kubectl("delete", "pod", handler_pod, "-n", SHOP, "--wait=false")
    faults.append(f"deleted handler {handler_pod}")
    eventually(lambda: all_ready(installed, SHOP, HANDLER_PODS, 3), timeout=180, interval=1)

    # 4. helm upgrade rolling both Deployments (a changed pod annotation, as a user's upgrade would).
    installed.cluster.helm(
        "upgrade", "schedulezero", str(controlplane.REPO / "charts" / "schedulezero"), "-n", SYSTEM,
        "--reuse-values", "--set", "operator.podAnnotations.rolled=yes", "--wait", "--timeout", "5m",
    )  # fmt: skip
    installed.cluster.helm(
        "upgrade", HANDLER, str(controlplane.REPO / "charts" / "handler"), "-n", SHOP,
        "--reuse-values", "--set", "podAnnotations.rolled=yes", "--wait", "--timeout", "5m",
    )  # fmt: skip
    faults.append("helm upgrade of both releases")
    eventually(lambda: operators_settled(installed), timeout=180)
    eventually(lambda: all_ready(installed, SHOP, HANDLER_PODS, 3), timeout=180)
    end = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(seconds=2)

    def in_window(nominal: str) -> bool:
        return start <= datetime.datetime.fromisoformat(nominal) <= end

    expected = {
        (f"{SHOP}/beat-{i}", start + datetime.timedelta(seconds=s))
        for i in range(SCHEDULES)
        for s in range(int((end - start).total_seconds()) + 1)
    }

    def window() -> dict[tuple[str, str], list[deliveries.Delivery]]:
        sent = deliveries.by_run([d for found in journals(installed).values() for d in found], prefix=f"{SHOP}/beat-")
        return {run: d for run, d in sent.items() if in_window(run[1])}

    def missing() -> list[tuple[str, datetime.datetime]]:
        seen = {(schedule, datetime.datetime.fromisoformat(nominal)) for schedule, nominal in window()}
        return sorted(expected - seen)

    report = f"window {start:%H:%M:%S}..{end:%H:%M:%S}, faults: {faults}"
    try:
        eventually(lambda: not missing(), timeout=120, interval=1)
    except AssertionError:
        gone = missing()
        raise AssertionError(f"{len(gone)} times never ran, e.g. {gone[:5]}; {report}") from None
    runs = window()
    doubled = deliveries.double_fired(runs)
    assert not doubled, f"{len(doubled)} runs fired twice, e.g. {list(doubled.items())[:3]}; {report}"
    assert len(runs) == len(expected), report
    unanswered = [run for run, sent in runs.items() if not any(d.answer == "run" for d in sent)]
    assert not unanswered, f"{len(unanswered)} runs never executed, e.g. {unanswered[:3]}; {report}"
    pods_used = {pod for pod, found in journals(installed).items() if any(run in runs for run in by_run(found))}
    print(f"{len(runs)} runs in the window on {len(pods_used)} handler pods; {report}")


SLOW_HANDLER = """
import asyncio

from schedulezero_handler import Handler, expose


class Slow(Handler):
    @expose
    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds} s"
"""


def test_a_deleted_handler_pod_drains_the_call_in_flight(installed: Installed) -> None:
    """The user's own handler code from a ConfigMap on the stock image; a call in flight at the delete completes
    within the pod's grace period, answered by that pod, not retried elsewhere."""
    cluster = installed.cluster
    code = installed.local.dir / "slow_handler.py"
    code.write_text(SLOW_HANDLER)
    journal = installed.journal / "drain"
    journal.mkdir()
    journal.chmod(0o777)
    values = installed.local.dir / "slow-values.yaml"
    values.write_text(
        json.dumps(
            {
                "handler": "slow_handler:Slow",
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "extraArgs": ["--app-dir=/app", "--journal=/journal/$(POD_NAME).jsonl"],
                "extraVolumes": [
                    {"name": "code", "configMap": {"name": "slow-code"}},
                    {"name": "journal", "hostPath": {"path": str(journal), "type": "Directory"}},
                ],
                "extraVolumeMounts": [
                    {"name": "code", "mountPath": "/app"},
                    {"name": "journal", "mountPath": "/journal"},
                ],
            }
        )
    )
    cluster.kubectl("create", "configmap", "slow-code", "-n", SHOP, f"--from-file={code}")
    cluster.helm(
        "install", "slow", str(controlplane.REPO / "charts" / "handler"), "-n", SHOP, "-f", str(values),
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    schedule = {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": "drained", "namespace": SHOP},
        "spec": {"handler": "slow", "method": "slow", "params": {"seconds": 10}, "schedule": "0 0 1 1 *"},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(schedule))
    pod = eventually(lambda: all_ready(installed, SHOP, "app.kubernetes.io/instance=slow", 1), timeout=120)[0]
    name = pod["metadata"]["name"]
    plugin = controlplane.REPO / ".venv" / "bin" / "kubectl-schedulezero"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}

    def in_flight() -> list[deliveries.Delivery]:
        return [d for d in deliveries.read(journal / f"{name}.jsonl") if d.method == "slow"]

    # The operator may not have seen the Handler ready yet: ask again until a call reaches the pod.
    def asked() -> list[deliveries.Delivery]:
        if not in_flight():
            subprocess.run([str(plugin), "run-now", "drained", "-n", SHOP], env=env, capture_output=True, check=True)
            time.sleep(3)
        return in_flight()

    call = eventually(asked, timeout=90, interval=0.5)[0]
    cluster.kubectl("delete", "pod", name, "-n", SHOP, "--wait=false")

    def recorded() -> str | None:
        done = subprocess.run(
            [str(plugin), "runs", "drained", "-n", SHOP], env=env, capture_output=True, text=True, check=False
        )
        rows = [line for line in done.stdout.splitlines()[1:] if call.scheduled and line.startswith(call.scheduled)]
        return rows[0] if rows and "Running" not in rows[0] else None

    row = eventually(recorded, timeout=90, interval=1)
    assert " Succeeded " in row, row
    assert "slept 10 s" in row, row
    assert row.split()[2] == "1", row  # one attempt: the draining pod answered
    deliveries_of_call = [
        d for found in map(deliveries.read, journal.glob("*.jsonl")) for d in found if d.call == call.call
    ]
    assert len(deliveries_of_call) == 1, deliveries_of_call
    cluster.helm("uninstall", "slow", "-n", SHOP, "--wait", "--timeout", "3m")


def test_helm_uninstall_removes_the_pods_and_keeps_the_crds_and_schedules(installed: Installed) -> None:
    installed.cluster.helm("uninstall", HANDLER, "-n", SHOP, "--wait", "--timeout", "3m")
    installed.cluster.helm("uninstall", "schedulezero", "-n", SYSTEM, "--wait", "--timeout", "3m")
    for namespace in (SHOP, SYSTEM):
        eventually(lambda namespace=namespace: not installed.pods(namespace, ""), timeout=120, interval=1)  # type: ignore[misc]
    crds = installed.cluster.kubectl("get", "crd", "-o", "name").stdout
    assert "customresourcedefinition.apiextensions.k8s.io/schedules.schedulezero.io" in crds
    assert "customresourcedefinition.apiextensions.k8s.io/handlers.schedulezero.io" in crds
    left = installed.cluster.kubectl("get", "sched", "-n", SHOP, "-o", "name").stdout.split()
    assert len(left) == SCHEDULES + len(SCENARIO) + 1, left  # the beats, the dashboard's two, the drained one
