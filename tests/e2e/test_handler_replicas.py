"""A Handler with several replicas behind a Service, against the real API server: each run at one pod, once.

No kubelet and no endpointslice controller run here, so the test plays them:
each pod is a real handler process on an address of its own (one port for
all, as pods share a container port), and the test writes the Service's
EndpointSlice as the controller would, with pods ready, terminating or gone.
The API server refuses loopback addresses in a slice, so the pods' addresses
come from the benchmarking range 198.18.0.0/15, added to the loopback
interface for the session (``ip addr``, as root). The handlers are the judge:
each journals every execution to a file, which a SIGKILL does not take away.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import conductor, controlplane, processes, waiting
from tests.support.operator import Operator

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"
POD_ADDRESSES = [f"198.18.0.{i}" for i in range(2, 7)]


@pytest.fixture(scope="module")
def pod_addresses() -> Iterator[list[str]]:
    """Addresses for five pods on this machine: added to ``lo`` for the module, then removed."""
    added = []
    try:
        shown = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True)
        for address in POD_ADDRESSES:
            if f" {address}/" in shown.stdout:
                continue
            done = subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"cannot add pod address {address} to lo (needs root): {done.stderr}", pytrace=False)
            added.append(address)
        yield POD_ADDRESSES
    finally:
        for address in added:
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


class Pods:
    """Handler processes standing in for a Deployment's pods, and the EndpointSlice that lists them."""

    def __init__(self, cluster: controlplane.Cluster, namespace: str, workdir: pathlib.Path) -> None:
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.port = controlplane.free_port()
        self.processes: dict[str, processes.HandlerProcess] = {}

    def start(self, count: int) -> None:
        for index in range(len(self.processes), count):
            name = f"probe-{index}"
            self.processes[name] = processes.start_handler(
                PROBE,
                self.workdir,
                port=self.port,
                host=self.ip(name),
                env={"PROBE_JOURNAL": str(self.workdir / f"{name}.jsonl")},
            )

    @staticmethod
    def ip(name: str) -> str:
        return POD_ADDRESSES[int(name.rsplit("-", 1)[1])]

    def endpoint(self, name: str) -> str:
        return f"tcp://{self.ip(name)}:{self.port}"

    def publish(self, ready: list[str], terminating: tuple[str, ...] | list[str] = ()) -> float:
        """Writes the slice as the endpointslice controller would; returns when (Unix time)."""
        entries = [
            {
                "addresses": [self.ip(name)],
                "conditions": {"ready": name in ready, "serving": True, "terminating": name in terminating},
                "targetRef": {"kind": "Pod", "name": name, "namespace": self.namespace},
            }
            for name in [*ready, *terminating]
        ]
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "probe-x7k2p",
                "labels": {
                    "kubernetes.io/service-name": "probe",
                    "endpointslice.kubernetes.io/managed-by": "tests.schedulezero.io",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "zmq", "port": self.port, "protocol": "TCP"}],
            "endpoints": entries,
        }
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(body))
        return time.time()

    def busy(self, name: str) -> bool:
        """Whether the pod has just started a run (within the last 0.1 s), so it is in flight now."""
        path = self.workdir / f"{name}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        last = json.loads(lines[-1]) if lines else {}
        return bool(last.get("event") == "start" and last["at"] > time.time() - 0.1)

    def journal(self) -> list[dict[str, Any]]:
        """Every execution's start, failure and end at every pod, with the pod's name."""
        entries = []
        for name in self.processes:
            path = self.workdir / f"{name}.jsonl"
            if path.exists():
                entries += [{**json.loads(line), "pod": name} for line in path.read_text().splitlines() if line]
        return entries

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.kill()


@pytest.fixture
def pods(
    cluster: controlplane.Cluster, namespace: str, tmp_path: pathlib.Path, pod_addresses: list[str]
) -> Iterator[Pods]:
    replicas = Pods(cluster, namespace, tmp_path)
    try:
        yield replicas
    finally:
        replicas.stop_all()


def install(pods: Pods, *, count: int, prefix: str = "beat", **params: Any) -> None:
    """The selectorless Service, its Handler, and ``count`` Schedules firing every second."""
    documents: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe"},
         "spec": {"ports": [{"name": "zmq", "port": pods.port, "targetPort": pods.port}]}},
        {"apiVersion": "schedulezero.io/v1alpha1", "kind": "Handler", "metadata": {"name": "probe"},
         "spec": {"service": {"name": "probe", "port": pods.port}}},
    ]  # fmt: skip
    documents += [schedule(f"{prefix}-{i:03d}", **params) for i in range(count)]
    apply(pods, documents)


def schedule(name: str, **params: Any) -> dict[str, Any]:
    return {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": name},
        "spec": {
            "handler": "probe",
            "method": "tick",
            "params": params,
            "schedule": "@every 1s",
            "retry": {"maxAttempts": 3, "backoffSeconds": 0.1},
            "successfulRunsHistoryLimit": 100,
        },
    }


def apply(pods: Pods, documents: list[dict[str, Any]]) -> None:
    pods.cluster.kubectl("apply", "-n", pods.namespace, "-f", "-", input="\n---\n".join(map(json.dumps, documents)))


def deploy(pods: Pods, kubeconfig: pathlib.Path, *, started: int, ready: int, count: int, **params: Any) -> Operator:
    """``started`` pods, the first ``ready`` of them in the slice, ``count`` Schedules, and an operator."""
    pods.start(started)
    pods.publish(ready=[f"probe-{i}" for i in range(ready)])
    install(pods, count=count, **params)
    return Operator(kubeconfig, pods.workdir / "operator.log", "--namespace", pods.namespace).start()


def handler_status(pods: Pods) -> dict[str, Any]:
    found = pods.cluster.kubectl("get", "handler", "probe", "-n", pods.namespace, "-o", "json")
    return dict(json.loads(found.stdout).get("status") or {})


def reachable(pods: Pods, ready: int) -> dict[str, Any] | None:
    status = handler_status(pods)
    return status if status.get("readyReplicas") == ready and status.get("replicas") == ready else None


def done_runs(journal: list[dict[str, Any]], start: float, end: float) -> collections.Counter[tuple[str, str]]:
    """How often each (Schedule, nominal time) in [start, end] was executed to its end."""
    return collections.Counter(
        (entry["schedule"], entry["scheduled"])
        for entry in journal
        if entry["event"] == "done" and start <= _unix(entry["scheduled"]) <= end
    )


def assert_each_run_done_once(
    journal: list[dict[str, Any]], schedules: list[str], start: float, end: float
) -> collections.Counter[tuple[str, str]]:
    """Every second of every Schedule in the window ran to its end exactly once, at some pod."""
    done = done_runs(journal, start, end)
    duplicated = {run: count for run, count in done.items() if count > 1}
    assert not duplicated, f"{len(duplicated)} runs executed more than once: {list(duplicated.items())[:5]}"
    gaps = []
    for name in schedules:
        seen = sorted(_unix(nominal) for schedule, nominal in done if schedule == name)
        worst = max(b - a for a, b in itertools.pairwise([start, *seen, end]))
        if worst > 1.05:
            gaps.append((name, round(worst, 2)))
    assert not gaps, f"runs lost (Schedule, longest gap in s): {gaps[:10]}"
    return done


def _unix(rfc3339: str) -> float:
    return datetime.datetime.fromisoformat(rfc3339).timestamp()


def test_runs_spread_over_the_replicas_and_all_attempts_of_a_run_reach_one_pod(
    pods: Pods, namespace: str, system_kubeconfigs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    apply(pods, [schedule(f"flaky-{i}", failures=2) for i in range(6)])
    replica = deploy(pods, system_kubeconfigs["operator"], started=3, ready=3, count=50)
    try:
        status = waiting.eventually(lambda: reachable(pods, 3), timeout=60)
        start = time.time() + 3
        time.sleep(13)
        end = time.time() - 3
    finally:
        assert replica.stop() == 0, replica.output()[-3000:]
    assert status["conditions"][0]["reason"] == "AllReplicasReachable", status
    assert sorted(pod["name"] for pod in status["pods"]) == ["probe-0", "probe-1", "probe-2"]
    journal = pods.journal()
    beats = [f"{namespace}/beat-{i:03d}" for i in range(50)]
    done = assert_each_run_done_once(journal, beats, start, end)
    where = {(e["schedule"], e["scheduled"]): e["pod"] for e in journal if e["event"] == "done"}
    share = collections.Counter(where[run] for run in done if run[0] in beats)
    third = sum(share.values()) / 3
    assert all(abs(share[name] - third) <= 0.25 * third for name in pods.processes), share
    # A run that fails twice then succeeds: its three attempts at one pod, which had its reply to give.
    attempts: collections.defaultdict[tuple[str, str], list[tuple[str, int]]] = collections.defaultdict(list)
    for entry in journal:
        if "/flaky-" in entry["schedule"] and entry["event"] == "start" and start <= _unix(entry["scheduled"]) <= end:
            attempts[entry["schedule"], entry["scheduled"]].append((entry["pod"], entry["attempt"]))
    assert len(attempts) >= 6 * 5, len(attempts)
    scattered = {run: seen for run, seen in attempts.items() if len({pod for pod, _ in seen}) != 1}
    assert not scattered, list(scattered.items())[:5]
    assert all(sorted(a for _, a in seen) == [1, 2, 3] for seen in attempts.values()), list(attempts.items())[:5]
    # Each run's record names the pod it ran at.
    found = json.loads(pods.cluster.kubectl("get", "schedule", "beat-000", "-n", namespace, "-o", "json").stdout)
    recorded = {run["endpoint"] for run in found["status"]["runs"] if run["outcome"] == "Succeeded"}
    assert recorded <= {pods.endpoint(name) for name in pods.processes}
    assert recorded


def test_a_killed_replica_loses_no_run_and_its_run_in_flight_is_retried_on_another_pod(
    pods: Pods, namespace: str, system_kubeconfigs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    replica = deploy(pods, system_kubeconfigs["operator"], started=3, ready=3, count=30, seconds=0.4)
    try:
        waiting.eventually(lambda: reachable(pods, 3), timeout=60)
        start = time.time() + 3
        time.sleep(6)
        waiting.eventually(lambda: pods.busy("probe-0"), interval=0.02)  # killed mid-run, not between runs
        pods.processes["probe-0"].kill()
        time.sleep(1)  # the kubelet's and the controller's delay: the operator learns from its socket first
        pods.publish(ready=["probe-1", "probe-2"])
        waiting.eventually(lambda: reachable(pods, 2), timeout=30)
        time.sleep(6)
        end = time.time() - 3
    finally:
        assert replica.stop() == 0, replica.output()[-3000:]
    journal = pods.journal()
    assert_each_run_done_once(journal, [f"{namespace}/beat-{i:03d}" for i in range(30)], start, end)
    done_at = {(e["schedule"], e["scheduled"]): e for e in journal if e["event"] == "done"}
    ended_there = {(e["schedule"], e["scheduled"]) for e in journal if e["event"] == "done" and e["pod"] == "probe-0"}
    cut_short = [
        e for e in journal
        if e["pod"] == "probe-0" and e["event"] == "start" and (e["schedule"], e["scheduled"]) not in ended_there
    ]  # fmt: skip
    assert cut_short, "no run was in flight at the killed pod: the test proves nothing"
    for entry in cut_short:
        retried = done_at[entry["schedule"], entry["scheduled"]]
        assert retried["pod"] != "probe-0"
        assert retried["attempt"] > entry["attempt"]
    # ...and its record says so: another attempt, at another pod.
    entry = cut_short[0]
    name = entry["schedule"].split("/", 1)[1]
    found = json.loads(pods.cluster.kubectl("get", "schedule", name, "-n", namespace, "-o", "json").stdout)
    record = next(r for r in found["status"]["runs"] if r["scheduledTime"] == entry["scheduled"])
    assert record["outcome"] == "Succeeded"
    assert record["attempts"] >= 2
    assert record["endpoint"] != pods.endpoint("probe-0")


def test_scaling_three_to_five_to_two_loses_and_repeats_nothing_and_a_terminating_pod_finishes_its_runs(
    pods: Pods, namespace: str, system_kubeconfigs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    replica = deploy(pods, system_kubeconfigs["operator"], started=5, ready=3, count=40, seconds=0.3)
    scraper = conductor.start_conductor(
        tmp_path, "--namespace", namespace, env={"KUBECONFIG": str(system_kubeconfigs["conductor"])}
    )

    def pods_up() -> set[str]:
        samples = scraper.samples()
        return {
            dict(labels)["pod"]
            for (name, labels), value in samples.items()
            if name == "schedulezero_handler_up" and dict(labels).get("handler") == f"{namespace}/probe" and value == 1
        }

    try:
        waiting.eventually(lambda: reachable(pods, 3), timeout=60)
        start = time.time() + 3
        time.sleep(5)
        grown_at = pods.publish(ready=[f"probe-{i}" for i in range(5)])
        waiting.eventually(lambda: reachable(pods, 5), timeout=30)
        assert waiting.eventually(lambda: pods_up() == set(pods.processes), timeout=30)
        time.sleep(5)
        shrunk_at = pods.publish(ready=["probe-0", "probe-1"], terminating=["probe-2"])
        waiting.eventually(lambda: pods_up() == {"probe-0", "probe-1", "probe-2"}, timeout=30)
        time.sleep(5)
        end = time.time() - 3
    finally:
        scraper.stop()
        assert replica.stop() == 0, replica.output()[-3000:]
    journal = pods.journal()
    assert_each_run_done_once(journal, [f"{namespace}/beat-{i:03d}" for i in range(40)], start, end)
    starts = [e for e in journal if e["event"] == "start"]
    while_five = collections.Counter(e["pod"] for e in starts if grown_at + 1 < e["at"] < shrunk_at)
    assert set(while_five) == set(pods.processes), while_five
    after = [e for e in starts if e["at"] > shrunk_at + 1]
    assert {e["pod"] for e in after} == {"probe-0", "probe-1"}, collections.Counter(e["pod"] for e in after)
    # The terminating pod finished the runs it had: each one it started, it also ended, and only there.
    kept = [e for e in starts if e["pod"] == "probe-2" and shrunk_at - 1 < e["at"] <= shrunk_at + 1]
    assert kept, "the terminating pod started no run around its termination: the test proves nothing"
    finished = {(e["schedule"], e["scheduled"], e["pod"]) for e in journal if e["event"] == "done"}
    assert all((e["schedule"], e["scheduled"], "probe-2") in finished for e in kept), kept
