"""The operator against a real local control plane: 1,000 Schedules, time to schedule, RSS and API load.

Starts etcd and kube-apiserver (``tests/support/controlplane.py``), applies
the CRDs, a ProbeHandler process (``tests.support.handlers:ProbeHandler``) and
its Handler resource, then runs ``schedulezero operator -n bench`` as a
process and applies 1,000 Schedules (``@every 10s``, method ``tick``) in a
few ``kubectl apply`` batches. It measures:

- the time from the first ``kubectl apply`` until all 1,000 show
  ``status.nextRunTime`` (polled with ``kubectl get sched -o json``);
- at steady state, over a window of about 60 s with about 100 fires/s: the
  operator's RSS and CPU, the calls its handler served, and the API server's
  own request counter ``apiserver_request_total`` (read from its ``/metrics``
  before and after, summed over all labels and broken down by verb and
  resource), against the same counter over a window before the operator
  started (the control plane's own requests).

Run from the repository root: ``.venv/bin/python bench/bench_operator.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import benchlib
import psutil

from schedulezero_handler import Client

sys.path.insert(0, str(benchlib.REPO))  # tests.support is not an installed package
from tests.support import controlplane, processes

PROBE = "tests.support.handlers:ProbeHandler"
CRDS = benchlib.REPO / "operator" / "schedulezero_operator" / "crds"
NAMESPACE = "bench"
HANDLER = "probe"
API_VERSION = "schedulezero.io/v1alpha1"
MIB = 1024 * 1024
SHOWN_WARNINGS = 5
SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)", re.MULTILINE)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

RequestKey = tuple[str, str]
"""(verb, resource[/subresource]) of ``apiserver_request_total``."""


# -- the cluster ------------------------------------------------------------------


def apply(cluster: controlplane.Cluster, items: list[dict[str, Any]], *extra: str) -> None:
    document = {"apiVersion": "v1", "kind": "List", "items": items}
    cluster.kubectl("apply", "-n", NAMESPACE, *extra, "-f", "-", input=json.dumps(document))


def handler_doc(endpoint: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Handler", "metadata": {"name": HANDLER}, "spec": {"endpoint": endpoint}}


def schedule_doc(index: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Schedule",
        "metadata": {"name": f"tick-{index:04d}"},
        "spec": {"handler": HANDLER, "method": "tick", "schedule": "@every 10s"},
    }


def prepare(cluster: controlplane.Cluster, endpoint: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("create", "namespace", "schedulezero-system")  # the election's Leases and checkpoints
    apply(cluster, [handler_doc(endpoint)])


def apply_schedules(cluster: controlplane.Cluster, count: int, batches: int) -> float:
    """Applies the Schedules in ``batches`` server-side ``kubectl apply`` runs, one after another; their time."""
    start = time.perf_counter()
    size = -(-count // batches)
    for first in range(0, count, size):
        apply(cluster, [schedule_doc(index) for index in range(first, min(count, first + size))], "--server-side")
    return time.perf_counter() - start


def scheduled(cluster: controlplane.Cluster) -> int:
    listed = json.loads(cluster.kubectl("get", "schedules", "-n", NAMESPACE, "-o", "json").stdout)
    return sum(1 for item in listed["items"] if (item.get("status") or {}).get("nextRunTime"))


def wait_until(
    what: str, done: Callable[[], bool], operator: benchlib.ServerProcess, timeout: float, *, every: float = 0.5
) -> None:
    """Polls ``done`` ``every`` seconds: a poll that lists every Schedule loads the API server the operator
    is measured against, so at 10,000 it comes seldom (the time it finds is then up to ``every`` late)."""
    deadline = time.monotonic() + timeout
    while not done():
        if operator.popen.poll() is not None:
            raise RuntimeError(f"the operator exited with {operator.popen.returncode}:\n{operator.output()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f} s\n{operator.output()[-4000:]}")
        time.sleep(every)


def handler_state(cluster: controlplane.Cluster) -> str:
    jsonpath = "jsonpath={.status.state}"
    return cluster.kubectl("get", "handler", HANDLER, "-n", NAMESPACE, "-o", jsonpath).stdout.strip()


# -- the processes ----------------------------------------------------------------


@contextlib.contextmanager
def running_handler(log_dir: pathlib.Path, *args: str) -> Iterator[processes.HandlerProcess]:
    handler = processes.start_handler(PROBE, log_dir, "--idle-timeout", "0", *args)
    try:
        yield handler
    finally:
        handler.stop()


@contextlib.contextmanager
def running_operator(
    cluster: controlplane.Cluster, log_dir: pathlib.Path, args: argparse.Namespace
) -> Iterator[benchlib.ServerProcess]:
    """``schedulezero operator`` with the defaults (status interval 2 s) but the budget and shards, no liveness."""
    log = log_dir / "operator.log"
    argv = [benchlib.SCHEDULEZERO, "operator", "-n", NAMESPACE, "--metrics-port", str(args.metrics_port)]
    argv += [
        "--liveness-port",
        "0",
        "--kube-api-qps",
        str(args.kube_api_qps),
        "--kube-api-burst",
        str(args.kube_api_burst),
        "--shards",
        str(args.shards),
    ]
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=benchlib.REPO, env=env)
    operator = benchlib.ServerProcess("operator", popen, log)
    try:
        yield operator
    finally:
        operator.stop(timeout=30.0)


# -- measuring --------------------------------------------------------------------


def api_requests(plane: controlplane.LocalControlPlane) -> collections.Counter[RequestKey]:
    """The API server's ``apiserver_request_total``, summed by verb and resource over the other labels."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # loopback, self-signed
    request = urllib.request.Request(f"{plane.server}/metrics", headers={"Authorization": f"Bearer {plane.token}"})
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        text = response.read().decode()
    counts: collections.Counter[RequestKey] = collections.Counter()
    for sample in SAMPLE.finditer(text):
        labels = dict(LABEL.findall(sample["labels"]))
        resource = "/".join(part for part in (labels.get("resource"), labels.get("subresource")) if part)
        counts[labels.get("verb", "?"), resource or "(non-resource URL)"] += int(float(sample["value"]))
    return counts


async def _tick_calls(endpoint: str) -> int:
    async with Client() as client:
        metrics = await client.call(endpoint, "sys.metrics", timeout=10.0)
    return int(metrics["calls"].get("tick", {}).get("ok", 0))


def tick_calls(endpoint: str) -> int:
    """Successful ``tick`` calls the handler has served."""
    return asyncio.run(_tick_calls(endpoint))


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    used = {}
    for name, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        used[name] = times.user + times.system
    return used


@dataclasses.dataclass(frozen=True)
class Window:
    """What a steady-state window saw."""

    seconds: float
    requests: collections.Counter[RequestKey]
    cpu_percent: dict[str, float]
    rss_max: float = 0.0
    rss_last: float = 0.0
    fires: int = 0
    oldest_pending_max: float = 0.0
    """The longest a status change waited for its write, as the operator's /metrics showed every 5 s."""
    pending_max: float = 0.0
    scrape_bytes: int = 0
    """Size of the operator's /metrics (per-Schedule series), the largest seen, and how long it took."""
    scrape_seconds: float = 0.0

    def per_second(self, key: RequestKey | None = None) -> float:
        count = self.requests[key] if key is not None else sum(self.requests.values())
        return count / self.seconds


def scrape(port: int) -> tuple[str, float]:
    """The operator's /metrics and the seconds it took; empty if it did not answer within a minute."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
            text = response.read().decode()
    except OSError as error:
        print(f"  /metrics did not answer: {error}", flush=True)
        return "", time.perf_counter() - start
    return text, time.perf_counter() - start


def gauge(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def measure_window(
    plane: controlplane.LocalControlPlane,
    pids: dict[str, int],
    seconds: float,
    *,
    operator: int | None = None,
    metrics_port: int | None = None,
) -> Window:
    """API requests and CPU over ``seconds``; the operator's RSS and status backlog every 5 s when it runs."""
    before, cpu_before, start = api_requests(plane), cpu_seconds(pids), time.perf_counter()
    rss: list[float] = []
    oldest, pending = [0.0], [0.0]
    scrapes: list[tuple[int, float]] = []
    while (left := seconds - (time.perf_counter() - start)) > 0:
        time.sleep(min(5.0, left))
        if operator is not None:
            rss.append(psutil.Process(operator).memory_info().rss / MIB)
        if metrics_port is not None:
            text, took = scrape(metrics_port)
            oldest.append(gauge(text, "schedulezero_status_oldest_pending_seconds"))
            pending.append(gauge(text, "schedulezero_status_pending"))
            scrapes.append((len(text), took))
    after, cpu_after = api_requests(plane), cpu_seconds(pids)
    elapsed = time.perf_counter() - start
    requests = collections.Counter({key: after[key] - before[key] for key in after if after[key] > before[key]})
    cpu = {name: 100 * (cpu_after[name] - cpu_before[name]) / elapsed for name in pids}
    largest = max(scrapes, default=(0, 0.0))
    return Window(
        elapsed, requests, cpu, max(rss, default=0.0), rss[-1] if rss else 0.0, 0, max(oldest), max(pending), *largest
    )


@dataclasses.dataclass(frozen=True)
class Result:
    apply_s: float
    all_scheduled_s: float
    baseline: Window
    steady: Window
    warnings: list[str]
    """The operator's log lines at WARNING or ERROR."""


def measure_operator(
    plane: controlplane.LocalControlPlane,
    cluster: controlplane.Cluster,
    handler: processes.HandlerProcess,
    args: argparse.Namespace,
    log_dir: pathlib.Path,
) -> Result:
    pids = {**{process.name: process.popen.pid for process in plane.processes}, "handler": handler.popen.pid}
    print(f"control plane idle for {args.baseline:.0f} s (no operator, no Schedules)", flush=True)
    baseline = measure_window(plane, pids, args.baseline)
    with running_operator(cluster, log_dir, args) as operator:
        wait_until("Handler probed", lambda: handler_state(cluster) == "Active", operator, 60.0)
        start = time.perf_counter()
        apply_s = apply_schedules(cluster, args.schedules, args.batches)
        print(f"applied {args.schedules:,} Schedules in {apply_s:.1f} s", flush=True)
        # Each first status is a write under the budget: the wait grows with the Schedules.
        timeout = 240.0 + 2 * args.schedules / args.kube_api_qps
        every = max(0.5, args.schedules / 1000)
        wait_until("all scheduled", lambda: scheduled(cluster) == args.schedules, operator, timeout, every=every)
        all_scheduled_s = time.perf_counter() - start
        print(f"all {args.schedules:,} show status.nextRunTime after {all_scheduled_s:.1f} s", flush=True)
        time.sleep(args.settle)
        print(f"steady state for {args.seconds:.0f} s", flush=True)
        fires = tick_calls(handler.endpoint)
        steady = measure_window(
            plane,
            {**pids, "operator": operator.pid},
            args.seconds,
            operator=operator.pid,
            metrics_port=args.metrics_port,
        )
        steady = dataclasses.replace(steady, fires=tick_calls(handler.endpoint) - fires)
        warnings = [line for line in operator.output().splitlines() if "WARNING" in line or "ERROR" in line]
    return Result(apply_s, all_scheduled_s, baseline, steady, warnings)


# -- reporting --------------------------------------------------------------------


def summary_table(result: Result, args: argparse.Namespace) -> str:
    steady, baseline = result.steady, result.baseline
    status_writes = steady.per_second(("PATCH", "schedules/status"))
    rows = [
        [
            f"kubectl apply --server-side, {args.batches} batches of {-(-args.schedules // args.batches)}",
            f"{result.apply_s:.1f} s",
        ],
        [f"first apply → all {args.schedules:,} show status.nextRunTime", f"{result.all_scheduled_s:.1f} s"],
        [
            f"operator RSS at steady state, max / last over {steady.seconds:.0f} s",
            f"{steady.rss_max:,.0f} / {steady.rss_last:,.0f} MiB",
        ],
        ["operator CPU at steady state", f"{steady.cpu_percent['operator']:.0f}%"],
        ["fires/s (tick calls the handler served)", f"{steady.fires / steady.seconds:.1f}"],
        [
            "API requests/s at steady state (all)",
            f"{steady.per_second():.1f} (control plane alone: {baseline.per_second():.1f})",
        ],
        [
            "status writes/s (PATCH schedules/status)",
            f"{status_writes:.1f} ({status_writes / max(1.0, steady.fires / steady.seconds):.2f} per run)",
        ],
        [
            f"API requests/s of the operator (all minus the control plane's); budget {args.kube_api_qps:g}/s",
            f"{steady.per_second() - baseline.per_second():.1f}",
        ],
        [
            "status backlog, max seen every 5 s: Schedules waiting / oldest change",
            f"{steady.pending_max:,.0f} / {steady.oldest_pending_max:.1f} s",
        ],
        [
            "operator /metrics: size / time to scrape it (largest)",
            f"{steady.scrape_bytes / MIB:.1f} MiB / {steady.scrape_seconds:.1f} s",
        ],
        [
            "CPU at steady state: kube-apiserver / etcd / handler",
            f"{steady.cpu_percent['kube-apiserver']:.0f}% / {steady.cpu_percent['etcd']:.0f}% / "
            f"{steady.cpu_percent['handler']:.0f}%",
        ],
    ]
    return benchlib.markdown_table(["", "measured"], rows)


def requests_table(result: Result) -> str:
    steady, baseline = result.steady, result.baseline
    keys = sorted(set(steady.requests) | set(baseline.requests), key=lambda k: (-steady.requests[k], k))
    rows = [
        [verb, resource, f"{steady.per_second((verb, resource)):.2f}", f"{baseline.per_second((verb, resource)):.2f}"]
        for verb, resource in keys
    ]
    rows.append(["all", "", f"{steady.per_second():.2f}", f"{baseline.per_second():.2f}"])
    headers = ["verb", "resource", "requests/s with the operator", "requests/s, control plane alone"]
    return benchlib.markdown_table(headers, rows)


# -- running ----------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=1_000, help="Schedules applied")
    parser.add_argument("--batches", type=int, default=4, help="kubectl apply runs they are applied in")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the steady-state window")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds between all scheduled and the window")
    parser.add_argument("--baseline", type=float, default=20.0, help="length of the window before the operator")
    parser.add_argument("--kube-api-qps", type=float, default=20.0, help="the operator's API budget (its default)")
    parser.add_argument("--kube-api-burst", type=int, default=40, help="the operator's API burst (its default)")
    parser.add_argument("--shards", type=int, default=4, help="the operator's shards (the chart's default)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.metrics_port = benchlib.free_port()
    benchlib.stop_on_sigterm()
    print(benchlib.environment("kopf", "kubernetes_asyncio", "apscheduler", "pyzmq"))
    with (
        tempfile.TemporaryDirectory(prefix="schedulezero-bench-") as directory,
        controlplane.running() as (plane, cluster),
    ):
        log_dir = pathlib.Path(directory)
        print(f"control plane at {plane.server}", flush=True)
        with running_handler(log_dir) as handler:
            prepare(cluster, handler.endpoint)
            result = measure_operator(plane, cluster, handler, args, log_dir)
    print()
    print(f"{args.schedules:,} Schedules, @every 10s, in one operator:")
    print()
    print(summary_table(result, args))
    print()
    print(f"API server requests by verb and resource ({args.seconds:.0f} s with the operator at steady state):")
    print()
    print(requests_table(result))
    print()
    print(f"operator log lines at WARNING or ERROR: {len(result.warnings)}")
    for line in result.warnings[:SHOWN_WARNINGS]:
        print(f"    {line[:300]}")


if __name__ == "__main__":
    main()
