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

With ``--replicas N`` it runs N replicas sharing ``--shards``, and also
measures what watching costs: the same Schedules are first applied to a
namespace no operator watches (and deleted), so the apply time with the
replicas running is set against the time with none; each replica's CPU from
the first apply until it is back below 20% of a core, divided by the watch
events it saw (the Schedules plus their status writes), is its cost per
event. ``--no-status-wait`` skips waiting for every ``status.nextRunTime``,
which under the default budget takes about a minute per 1,000 Schedules.
Schedules run ``@every`` schedules/100 seconds (at least 10 s), their
``startTime`` spread evenly over one period from the benchmark's start: about
100 fires a second at any scale from the apply on, however long it takes
(with their creation as the anchor, a period longer than the apply would
leave a gap without fires after each round).

Run from the repository root: ``.venv/bin/python bench/bench_operator.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime
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
UNWATCHED = "bench-unwatched"
HANDLER = "probe"
API_VERSION = "schedulezero.io/v1alpha1"
MIB = 1024 * 1024
SHOWN_WARNINGS = 5
SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)", re.MULTILINE)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

RequestKey = tuple[str, str]
"""(verb, resource[/subresource]) of ``apiserver_request_total``."""


# -- the cluster ------------------------------------------------------------------


def apply(cluster: controlplane.Cluster, items: list[dict[str, Any]], *extra: str, namespace: str = NAMESPACE) -> None:
    document = {"apiVersion": "v1", "kind": "List", "items": items}
    cluster.kubectl("apply", "-n", namespace, *extra, "-f", "-", input=json.dumps(document))


def handler_doc(endpoint: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Handler", "metadata": {"name": HANDLER}, "spec": {"endpoint": endpoint}}


ANCHOR = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
"""Where the Schedules' grids start: one period is spread over them, so that runs fire at an even rate."""


def schedule_doc(index: int, every: int, count: int) -> dict[str, Any]:
    start = ANCHOR + datetime.timedelta(seconds=every * index / count)
    return {
        "apiVersion": API_VERSION,
        "kind": "Schedule",
        "metadata": {"name": f"tick-{index:04d}"},
        "spec": {
            "handler": HANDLER,
            "method": "tick",
            "schedule": f"@every {every}s",
            "startTime": start.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        },
    }


def prepare(cluster: controlplane.Cluster, endpoint: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("create", "namespace", UNWATCHED)
    cluster.kubectl("create", "namespace", "schedulezero-system")  # the election's Leases and checkpoints
    apply(cluster, [handler_doc(endpoint)])


def apply_schedules(cluster: controlplane.Cluster, args: argparse.Namespace, *, namespace: str = NAMESPACE) -> float:
    """Applies the Schedules in ``batches`` server-side ``kubectl apply`` runs, one after another; their time."""
    start = time.perf_counter()
    size = -(-args.schedules // args.batches)
    for first in range(0, args.schedules, size):
        last = min(args.schedules, first + size)
        docs = [schedule_doc(index, args.every, args.schedules) for index in range(first, last)]
        apply(cluster, docs, "--server-side", namespace=namespace)
    return time.perf_counter() - start


def apply_unwatched(cluster: controlplane.Cluster, args: argparse.Namespace) -> tuple[float, float]:
    """The Schedules applied where no operator watches, and deleted again: (apply, delete) seconds."""
    applied = apply_schedules(cluster, args, namespace=UNWATCHED)
    print(f"no operator watching: applied in {applied:.1f} s", flush=True)
    start = time.perf_counter()
    # Deletecollection requests (kubectl delete --all deletes one object at a time). At 100,000 one outlasts
    # the request's timeout, and the API server stops where it got to: sent again until nothing is left.
    collection = f"/apis/schedulezero.io/v1alpha1/namespaces/{UNWATCHED}/schedules"
    while json.loads(cluster.kubectl("get", "--raw", f"{collection}?limit=1").stdout)["items"]:
        cluster.kubectl("delete", "--raw", collection, check=False)
    return applied, time.perf_counter() - start


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
def running_operators(
    cluster: controlplane.Cluster, log_dir: pathlib.Path, args: argparse.Namespace
) -> Iterator[list[benchlib.ServerProcess]]:
    """``--replicas`` operator processes, each on its own metrics port (``args.metrics_port`` + its index)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_operator(cluster, log_dir, args, index)) for index in range(args.replicas)]


@contextlib.contextmanager
def running_operator(
    cluster: controlplane.Cluster, log_dir: pathlib.Path, args: argparse.Namespace, index: int = 0
) -> Iterator[benchlib.ServerProcess]:
    """``schedulezero operator`` with the defaults (status interval 2 s) but the budget and shards, no liveness."""
    log = log_dir / f"operator-{index}.log"
    port = str(args.metrics_port + index)
    argv = [benchlib.SCHEDULEZERO, "operator", "-n", NAMESPACE, "--metrics-port", port, "--identity", f"op-{index}"]
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
    operator = benchlib.ServerProcess(f"operator-{index}", popen, log)
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
class Replica:
    """One operator replica, as seen at steady state."""

    name: str
    cpu_percent: float
    rss_mib: float
    shards: int
    scrape_bytes: int
    scrape_seconds: float
    api_requests_per_s: float
    """Requests its API budget let through (statuses, Events, checkpoints), per second."""
    event_ms: float
    """CPU per watch event while the Schedules were applied: its CPU until caught up over the events."""


@dataclasses.dataclass(frozen=True)
class Result:
    apply_s: float
    unwatched: tuple[float, float] | None
    """Applying the same Schedules where no operator watches, and deleting them: seconds."""
    caught_up_s: float
    """From the first apply until every replica is back below 20% of a core."""
    all_scheduled_s: float | None
    baseline: Window
    steady: Window
    replicas: list[Replica]
    lateness_p99: float | None
    warnings: list[str]
    """The operator's log lines at WARNING or ERROR."""


def metric_sum(text: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples whose labels contain ``labels``."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for found_labels, value in pattern.findall(text) if labels in (found_labels or ""))


def lateness_buckets(texts: list[str]) -> dict[float, float]:
    """The fire-lateness histogram's cumulative buckets, summed over the replicas."""
    buckets: collections.defaultdict[float, float] = collections.defaultdict(float)
    pattern = re.compile(r'^schedulezero_schedule_fire_lateness_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.MULTILINE)
    for text in texts:
        for bound, value in pattern.findall(text):
            buckets[float(bound)] += float(value)
    return dict(buckets)


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of the observations between two scrapes."""
    deltas = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    return next(bound for bound, count in deltas if count >= q * total)


def caught_up(operators: list[benchlib.ServerProcess], *, below: float = 20.0, timeout: float = 7200.0) -> None:
    """Waits until every replica used less than ``below`` % of a core over 5 s: its watch backlog is done."""
    deadline = time.monotonic() + timeout
    processes_ = [psutil.Process(operator.pid) for operator in operators]
    while time.monotonic() < deadline:
        before = [sum(p.cpu_times()[:2]) for p in processes_]
        time.sleep(5.0)
        used = [100 * (sum(p.cpu_times()[:2]) - b) / 5.0 for p, b in zip(processes_, before, strict=True)]
        if max(used) < below:
            return
    raise RuntimeError("the replicas did not catch up with the watch events")


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
    unwatched = None
    if args.compare_apply:
        unwatched = apply_unwatched(cluster, args)
        print(f"no operator watching: deleted in {unwatched[1]:.1f} s", flush=True)
    with running_operators(cluster, log_dir, args) as operators:
        first = operators[0]
        wait_until("Handler probed", lambda: handler_state(cluster) == "Active", first, 120.0)
        time.sleep(15.0)  # the replicas join the election and share the shards out
        replica_pids = {operator.name: operator.pid for operator in operators}
        requests_before, cpu_before = api_requests(plane), cpu_seconds(replica_pids)
        start = time.perf_counter()
        apply_s = apply_schedules(cluster, args)
        print(f"applied {args.schedules:,} Schedules in {apply_s:.1f} s with {args.replicas} replicas", flush=True)
        caught_up(operators)
        caught_up_s = time.perf_counter() - start
        cpu_after, requests_after = cpu_seconds(replica_pids), api_requests(plane)
        writes = requests_after["PATCH", "schedules/status"] - requests_before["PATCH", "schedules/status"]
        events = args.schedules + writes  # every replica sees every Schedule's ADDED and every status write
        event_ms = {name: 1000 * (cpu_after[name] - cpu_before[name]) / events for name in replica_pids}
        print(f"replicas caught up {caught_up_s:.1f} s after the first apply ({events:,} events each)", flush=True)
        all_scheduled_s = None
        if args.status_wait:
            # Each first status is a write under the budget: the wait grows with the Schedules.
            timeout = 240.0 + 2 * args.schedules / args.kube_api_qps
            every = max(0.5, args.schedules / 1000)
            wait_until("all scheduled", lambda: scheduled(cluster) == args.schedules, first, timeout, every=every)
            all_scheduled_s = time.perf_counter() - start
            print(f"all {args.schedules:,} show status.nextRunTime after {all_scheduled_s:.1f} s", flush=True)
        time.sleep(args.settle)
        print(f"steady state for {args.seconds:.0f} s", flush=True)
        fires = tick_calls(handler.endpoint)
        texts_before = [scrape(args.metrics_port + i)[0] for i in range(args.replicas)]
        counted_from = time.perf_counter()
        steady = measure_window(
            plane, {**pids, **replica_pids}, args.seconds, operator=first.pid, metrics_port=args.metrics_port
        )
        scrapes = [scrape(args.metrics_port + i) for i in range(args.replicas)]
        counted = time.perf_counter() - counted_from  # the window and the scrapes around it
        steady = dataclasses.replace(steady, fires=tick_calls(handler.endpoint) - fires)
        replicas = []
        for index, operator in enumerate(operators):
            (text, took), before = scrapes[index], texts_before[index]
            requested = metric_sum(text, "schedulezero_api_requests_total") - metric_sum(
                before, "schedulezero_api_requests_total"
            )
            replicas.append(
                Replica(
                    name=operator.name,
                    cpu_percent=steady.cpu_percent[operator.name],
                    rss_mib=psutil.Process(operator.pid).memory_info().rss / MIB,
                    shards=int(metric_sum(text, "schedulezero_shards_held")),
                    scrape_bytes=len(text),
                    scrape_seconds=took,
                    api_requests_per_s=requested / counted,
                    event_ms=event_ms[operator.name],
                )
            )
        lateness = bucket_quantile(lateness_buckets(texts_before), lateness_buckets([t for t, _ in scrapes]), 0.99)
        warnings = [
            line
            for operator in operators
            for line in operator.output().splitlines()
            if "WARNING" in line or "ERROR" in line
        ]
    return Result(apply_s, unwatched, caught_up_s, all_scheduled_s, baseline, steady, replicas, lateness, warnings)


# -- reporting --------------------------------------------------------------------


def summary_table(result: Result, args: argparse.Namespace) -> str:
    steady, baseline = result.steady, result.baseline
    status_writes = steady.per_second(("PATCH", "schedules/status"))
    applied = f"{result.apply_s:.1f} s"
    if result.unwatched is not None:
        floor = result.unwatched[0]
        applied += f" (no operator watching: {floor:.1f} s; {result.apply_s / floor:.2f} times that)"
    scheduled = "not waited for" if result.all_scheduled_s is None else f"{result.all_scheduled_s:.1f} s"
    lateness = "no fires" if result.lateness_p99 is None else f"≤ {1000 * result.lateness_p99:g} ms (bucket bound)"
    rows = [
        [
            f"kubectl apply --server-side, {args.batches} batches of {-(-args.schedules // args.batches)}, "
            f"{args.replicas} replicas running",
            applied,
        ],
        ["first apply → every replica below 20% of a core (watch backlog done)", f"{result.caught_up_s:.1f} s"],
        [f"first apply → all {args.schedules:,} show status.nextRunTime", scheduled],
        ["fires/s (tick calls the handler served)", f"{steady.fires / steady.seconds:.1f}"],
        ["fire lateness p99, all replicas", lateness],
        [
            "API requests/s at steady state (all)",
            f"{steady.per_second():.1f} (control plane alone: {baseline.per_second():.1f})",
        ],
        [
            "status writes/s (PATCH schedules/status)",
            f"{status_writes:.1f} ({status_writes / max(1.0, steady.fires / steady.seconds):.2f} per run)",
        ],
        [
            "status backlog of the first replica, max seen every 5 s: Schedules waiting / oldest change",
            f"{steady.pending_max:,.0f} / {steady.oldest_pending_max:.1f} s",
        ],
        [
            "CPU at steady state: kube-apiserver / etcd / handler",
            f"{steady.cpu_percent['kube-apiserver']:.0f}% / {steady.cpu_percent['etcd']:.0f}% / "
            f"{steady.cpu_percent['handler']:.0f}%",
        ],
    ]
    return benchlib.markdown_table(["", "measured"], rows)


def replicas_table(result: Result) -> str:
    rows = [
        [
            replica.name,
            str(replica.shards),
            f"{replica.event_ms:.2f} ms",
            f"{replica.cpu_percent:.1f}%",
            f"{replica.rss_mib:,.0f} MiB",
            f"{replica.scrape_bytes / MIB:.1f} MiB / {replica.scrape_seconds:.2f} s",
            f"{replica.api_requests_per_s:.1f}",
        ]
        for replica in result.replicas
    ]
    headers = ["replica", "shards", "CPU per watch event", "CPU at steady state", "RSS", "/metrics size / scrape",
               "API requests/s (budgeted)"]  # fmt: skip
    return benchlib.markdown_table(headers, rows)


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
    parser.add_argument("--replicas", type=int, default=1, help="operator replicas sharing the shards")
    parser.add_argument("--every", type=int, default=0, help="seconds between runs (default: about 100 fires/s)")
    parser.add_argument(
        "--compare-apply", action=argparse.BooleanOptionalAction, default=True,
        help="first apply (and delete) the Schedules where no operator watches, for the apply time's floor",
    )  # fmt: skip
    parser.add_argument(
        "--status-wait", action=argparse.BooleanOptionalAction, default=True,
        help="wait until every Schedule shows status.nextRunTime (a minute per 1,000 at the default budget)",
    )  # fmt: skip
    args = parser.parse_args()
    args.every = args.every or max(10, args.schedules // 100)
    return args


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
    print(f"{args.schedules:,} Schedules, @every {args.every}s, {args.replicas} replicas, {args.shards} shards:")
    print()
    print(summary_table(result, args))
    print()
    print(replicas_table(result))
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
