"""Operator replicas on a real local control plane: failover times, checkpoints, the election's API cost.

Three ``schedulezero operator`` replicas (client-go's timing: lease 15 s,
renew deadline 10 s, retry period 2 s) share ``--shards`` 8 over 10,000
Schedules (``@every 60s``, their runs spread evenly over the minute: about
170 fires a second, so runs come due during every fault). The Schedules are
applied while no replica runs:
applying them under three operators that each receive every watch event takes
a quarter of an hour on two cores. It measures:

- the election's own API requests per second (``apiserver_request_total``:
  every request for Leases, and the writes of checkpoint ConfigMaps, not
  their reads) with no Schedules and with all of them, which should not
  differ: its cost does not grow with the Schedules;
- shards per replica, each checkpoint's size, and checkpoint writes per second
  while runs happen;
- failover: three times a new replica is started and, once it is ready
  (``/readyz``), one holding shards is killed (SIGKILL); then every replica is
  replaced in turn the same way and stopped with SIGTERM (a rolling update,
  which waits for the new pod's readiness); for each shard moved, the time from the signal
  to the new owner's "took over" (its Schedules firing again), from the logs;
- per fault, over its window (from the signal to a minute after the last
  takeover), counted at the handler from its delivery journal: the runs due,
  the runs missing, the runs delivered twice beyond the documented re-sends
  (none should be), the re-sent runs (the times the killed owner may have
  started after its last checkpoint), and the runs executed twice (the reply
  cache answers re-sends, so none should be).

Run from the repository root: ``.venv/bin/python bench/bench_failover.py``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import bench_operator
import benchlib

sys.path.insert(0, str(benchlib.REPO))
from tests.support import controlplane, deliveries, processes

NAMESPACE = bench_operator.NAMESPACE
SYSTEM = "schedulezero-system"
PREFIX = "bench"
TOOK_OVER = re.compile(r"^\[(\S+ \S+)\] .*shard (\d+): took over (\d+) Schedules?")


class Replicas:
    def __init__(self, cluster: controlplane.Cluster, log_dir: pathlib.Path, shards: int) -> None:
        self.cluster, self.log_dir, self.shards = cluster, log_dir, shards
        self.all: list[benchlib.ServerProcess] = []
        self.ports: dict[str, int] = {}
        """Each replica's metrics port, which serves its ``/readyz``."""

    def start(self) -> benchlib.ServerProcess:
        name = f"replica-{len(self.all)}"
        self.ports[name] = port = benchlib.free_port()
        argv = [benchlib.SCHEDULEZERO, "operator", "-n", NAMESPACE, "--metrics-port", str(port), "--liveness-port", "0",
                "--shards", str(self.shards), "--status-interval", "10",
                "--lease-prefix", PREFIX, "--identity", name]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=benchlib.REPO, env=env)
        replica = benchlib.ServerProcess(name, popen, log)
        self.all.append(replica)
        return replica

    def ready(self, replica: benchlib.ServerProcess) -> bool:
        """Whether the replica's ``/readyz`` answers 200: it has seen every Schedule and entered the election."""
        if replica.popen.poll() is not None:
            raise RuntimeError(f"{replica.name} exited: {replica.output()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[replica.name]}/readyz", timeout=5) as answer:
                return int(answer.status) == 200
        except OSError:  # not listening yet, or 503
            return False

    def live(self) -> list[benchlib.ServerProcess]:
        return [r for r in self.all if r.popen.poll() is None]

    def holders(self) -> dict[int, str | None]:
        leases = json.loads(self.cluster.kubectl("get", "leases", "-n", SYSTEM, "-o", "json").stdout)["items"]
        prefix = f"{PREFIX}-shard-"
        return {
            int(lease["metadata"]["name"].removeprefix(prefix)): lease["spec"].get("holderIdentity")
            for lease in leases
            if lease["metadata"]["name"].startswith(prefix)
        }

    def holding(self, replica: benchlib.ServerProcess) -> list[int]:
        return sorted(shard for shard, holder in self.holders().items() if holder == replica.name)

    def stop_all(self) -> None:
        for replica in self.all:
            replica.stop(timeout=30.0)


def takeovers(replicas: Replicas, since: float) -> dict[int, float]:
    """Per shard, seconds from ``since`` to the first "took over" logged after it."""
    found: dict[int, float] = {}
    for replica in replicas.all:
        for line in replica.output().splitlines():
            match = TOOK_OVER.match(line)
            if match:
                moment = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
                shard = int(match[2])
                if moment >= since and (shard not in found or moment - since < found[shard]):
                    found[shard] = moment - since
    return found


def wait(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.5)


def schedules(count: int, *, first_runs: datetime.datetime, every: int) -> list[dict[str, Any]]:
    """``@every EVERYs``, anchored so that the first runs spread evenly over ``every`` seconds from ``first_runs``."""
    items = []
    for index in range(count):
        first = first_runs + datetime.timedelta(seconds=every * index / count)
        start = first - datetime.timedelta(seconds=every)
        spec = {"handler": bench_operator.HANDLER, "method": "tick", "schedule": f"@every {every}s",
                "catchUpPolicy": "All", "startTime": start.isoformat().replace("+00:00", "Z")}  # fmt: skip
        items.append({"apiVersion": bench_operator.API_VERSION, "kind": "Schedule",
                      "metadata": {"name": f"s-{index:05d}"}, "spec": spec})  # fmt: skip
    return items


def fired(endpoint: str) -> int:
    """Schedules that ran, counted at the handler: statuses are paced by the API budget and lag the runs."""
    return len({schedule for schedule, _ in processes.executions(endpoint)})


WRITES = {"POST", "PUT", "PATCH", "APPLY"}
"""The verbs that write an object: a checkpoint is created once, then replaced."""


def election_rate(window: bench_operator.Window) -> tuple[float, float]:
    """Lease requests (every verb) and checkpoint writes (ConfigMap writes only, not reads) per second."""
    leases = sum(v for (verb, resource), v in window.requests.items() if resource == "leases")
    writes = sum(v for (verb, resource), v in window.requests.items() if resource == "configmaps" and verb in WRITES)
    return leases / window.seconds, writes / window.seconds


def checkpoint_sizes(cluster: controlplane.Cluster) -> dict[str, int]:
    listed = json.loads(
        cluster.kubectl("get", "configmaps", "-n", SYSTEM, "-l", "schedulezero.io/checkpoint", "-o", "json").stdout
    )["items"]
    return {item["metadata"]["name"]: len(json.dumps(item)) for item in listed}


def failover(replicas: Replicas, how: signal.Signals) -> tuple[list[float], float, float]:
    """One replica holding shards stopped with ``how``, once a new one started first is ready (as a Deployment's
    rolling update does); seconds per shard moved, and the signal's time and the last takeover's (Unix time)."""
    victim = next(r for r in replicas.live() if replicas.holding(r))
    newcomer = replicas.start()
    wait(f"{newcomer.name} ready", lambda: replicas.ready(newcomer), 300)
    shards = replicas.holding(victim)
    since = time.time()
    if how is signal.SIGKILL:
        victim.popen.kill()
    else:
        victim.popen.send_signal(how)
    victim.popen.wait(600)  # a graceful stop: seconds, its unwritten records handed over in the final checkpoints
    wait("takeover", lambda: set(takeovers(replicas, since)) >= set(shards), 120)
    moved = takeovers(replicas, since)
    print(f"  {how.name}: {victim.name} held {shards}; taken over after "
          + ", ".join(f"{moved[s]:.1f} s" for s in shards), flush=True)  # fmt: skip
    for line in victim.output().splitlines():  # what a graceful stop did before it released the shards
        if "pending statuses" in line or "lost: released" in line:
            print(f"    {line}", flush=True)
    return [moved[s] for s in shards], since, since + max(moved[s] for s in shards)


@dataclasses.dataclass
class FaultWindow:
    name: str
    start: float
    """Unix time of the signal."""
    end: float
    """Unix time the window closes: a full period after the last takeover, so every time in it came due."""


def judge(window: FaultWindow, sent: dict[tuple[str, str], list[deliveries.Delivery]], items: list[dict[str, Any]],
          every: int) -> list[str]:  # fmt: skip
    """One table row: the runs due in the window, missing, delivered twice, re-sent, executed twice."""
    # Runs are told apart by Schedule and nominal time in milliseconds: the start times are spread over the
    # period in fractions of a second, and the call header writes its times in a format of its own.
    due: set[tuple[str, int]] = set()
    for item in items:
        anchor = datetime.datetime.fromisoformat(item["spec"]["startTime"]).timestamp()
        moment = anchor + every * max(0, -(-(window.start - anchor) // every))
        while moment < window.end:
            due.add((f"{NAMESPACE}/{item['metadata']['name']}", round(moment * 1000)))
            moment += every
    inside = {run: d for run, d in sent.items() if (run[0], milliseconds(run[1])) in due}
    doubled = deliveries.double_fired(inside)
    resent = [run for run, d in inside.items() if any(x.resent for x in d)]
    twice = [run for run, d in inside.items() if sum(1 for x in d if x.answer == "run") > 1]
    missing = len(due) - len(inside)
    return [window.name, f"{len(due):,}", str(missing), str(len(doubled)), f"{len(resent):,}", str(len(twice))]


def milliseconds(nominal: str) -> int:
    return round(datetime.datetime.fromisoformat(nominal).timestamp() * 1000)


@contextlib.contextmanager
def running(replicas: Replicas) -> Iterator[Replicas]:
    try:
        yield replicas
    finally:
        replicas.stop_all()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of each API-request window")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILL failovers")
    parser.add_argument("--every", type=int, default=60, help="the Schedules' period, seconds (default 60)")
    parser.add_argument("--keep", type=pathlib.Path, help="copy the replicas' logs and the journal here at the end")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    benchlib.stop_on_sigterm()
    print(benchlib.environment("kopf", "kubernetes_asyncio", "apscheduler"))
    with (
        tempfile.TemporaryDirectory(prefix="schedulezero-bench-") as directory,
        contextlib.ExitStack() as stack,
        controlplane.running() as (plane, cluster),
        bench_operator.running_handler(pathlib.Path(directory), "--journal", f"{directory}/journal.jsonl") as handler,
    ):
        if args.keep is not None:  # copied at the end, however it ends
            stack.callback(shutil.copytree, directory, args.keep, dirs_exist_ok=True)
        bench_operator.prepare(cluster, handler.endpoint)
        pids = {process.name: process.popen.pid for process in plane.processes}
        replicas = Replicas(cluster, pathlib.Path(directory), args.shards)
        with running(replicas):
            for _ in range(args.replicas):
                replicas.start()
            wait("every shard held", lambda: len([h for h in replicas.holders().values() if h]) == args.shards, 120)
            print(f"no Schedules: election requests for {args.window:.0f} s", flush=True)
            empty = bench_operator.measure_window(plane, pids, args.window)
        first_runs = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(
            seconds=120 + args.schedules / 40  # applying at 40/s or faster, then the replicas' initial listing
        )
        items = schedules(args.schedules, first_runs=first_runs, every=args.every)
        start = time.perf_counter()
        for first in range(0, len(items), 2500):
            bench_operator.apply(cluster, items[first : first + 2500], "--server-side")
        print(f"applied {args.schedules:,} Schedules in {time.perf_counter() - start:.0f} s", flush=True)
        with running(replicas):
            for _ in range(args.replicas):
                replicas.start()
            wait("every shard held", lambda: len([h for h in replicas.holders().values() if h]) == args.shards, 300)
            pause = (first_runs - datetime.datetime.now(datetime.UTC)).total_seconds()
            if pause < 0:
                raise RuntimeError(f"the first runs passed {-pause:.0f} s before the replicas were up")
            time.sleep(pause)
            print(f"with runs: election requests for {args.window:.0f} s", flush=True)
            busy = bench_operator.measure_window(plane, pids, args.window)
            wait("every Schedule ran", lambda: fired(handler.endpoint) >= args.schedules, 300)
            shares = collections.Counter(h for h in replicas.holders().values())
            time.sleep(5)
            sizes = checkpoint_sizes(cluster)
            print("failovers:", flush=True)
            killed: list[float] = []
            terminated: list[float] = []
            windows: list[FaultWindow] = []
            for number, how in enumerate([signal.SIGKILL] * args.kills + [signal.SIGTERM] * args.replicas, 1):
                times, since, last = failover(replicas, how)
                (killed if how is signal.SIGKILL else terminated).extend(times)
                windows.append(FaultWindow(f"{number}. {how.name}", since, last + args.every))
                time.sleep(max(0.0, last + args.every - time.time()))  # every time of the window came due
            time.sleep(5)
            warnings = sum(1 for r in replicas.all for line in r.output().splitlines() if "ERROR" in line)
            counted = processes.executions(handler.endpoint)
            # Kept past the run's directory: the per-fault table reads it, and it stays for a closer look.
            journal = pathlib.Path(tempfile.gettempdir()) / "bench_failover_journal.jsonl"
            shutil.copy(f"{directory}/journal.jsonl", journal)
    print()
    rows = [
        ["no Schedules", *(f"{rate:.2f}" for rate in election_rate(empty))],
        [f"{args.schedules:,} Schedules, runs firing", *(f"{rate:.2f}" for rate in election_rate(busy))],
    ]
    print(f"Election API requests/s, {args.replicas} replicas, {args.shards} shards:")
    print(benchlib.markdown_table(["", "Lease requests", "checkpoint writes (ConfigMaps)"], rows))
    print()
    print(f"shards per replica: {sorted(shares.values())}; checkpoints: "
          f"{min(sizes.values()):,} to {max(sizes.values()):,} bytes ({len(sizes)} of them)")  # fmt: skip
    print()
    lease = 15.0
    rows = [
        [name, str(len(times)), f"{benchlib.median(times):.1f} s", f"{max(times):.1f} s", goal,
         benchlib.verdict(max(times) <= limit)]
        for name, times, goal, limit in (
            ("SIGKILL", killed, "≤ lease duration + 2 s = 17 s", lease + 2),
            ("SIGTERM (rolling)", terminated, "≤ 3 s", 3.0),
        )
    ]  # fmt: skip
    print("Failover, signal to the new owner's takeover, per shard moved:")
    print(benchlib.markdown_table(["", "shards moved", "p50", "max", "goal", ""], rows))
    twice = sum(1 for times in counted.values() if times > 1)
    print(f"\nruns executed at the handler: {len(counted):,}, of them more than once: {twice}")
    sent = deliveries.by_run(deliveries.read(journal), prefix=f"{NAMESPACE}/")
    print("\nPer fault, from the signal to a period after the last takeover, counted at the handler:")
    headers = ["fault", "runs due", "missing", "delivered twice", "re-sent", "executed twice"]
    print(benchlib.markdown_table(headers, [judge(w, sent, items, args.every) for w in windows]))
    print(f"operator log lines at ERROR: {warnings}")
    if args.keep is not None:
        print(f"logs and the delivery journal kept in {args.keep}")


if __name__ == "__main__":
    main()
