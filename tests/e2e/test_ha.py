"""Several operator replicas against the real API server: every run happens, once.

The handler is the judge, with its reply cache off so that nothing hides a
second delivery: its journal records every delivery (run id, attempt, which
replica sent it, whether as a re-send), so a run fired twice by two replicas,
or by an old owner after a new one took over, shows as a double fire, and a
run nobody fired as a gap. Exactly once here comes from fencing alone.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import pathlib
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from schedulezero_operator import election
from tests.support import controlplane, deliveries, processes, proxy, waiting
from tests.support.operator import Operator

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"
SHARDS = 4


@pytest.fixture
def journal(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "deliveries.jsonl"


@pytest.fixture
def probe_handler(tmp_path: pathlib.Path, journal: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    args = ("--reply-cache-size", "0", "--journal", str(journal))
    with processes.running_handler(PROBE, tmp_path, *args) as handler:
        yield handler


class Replicas:
    """Operator replicas sharing one set of Leases; the test starts, kills, pauses and cuts them."""

    def __init__(self, kubeconfig: pathlib.Path, namespace: str, workdir: pathlib.Path) -> None:
        self.kubeconfig, self.namespace, self.workdir = kubeconfig, namespace, workdir
        self.prefix = f"ha-{namespace}"
        self.all: list[Operator] = []

    def start(self, *, kubeconfig: pathlib.Path | None = None, metrics_port: int = 0) -> Operator:
        index = len(self.all)
        replica = Operator(
            kubeconfig or self.kubeconfig,
            self.workdir / f"replica-{index}.log",
            "--namespace",
            self.namespace,
            lease_prefix=self.prefix,
            metrics_port=metrics_port,
            extra=("--shards", str(SHARDS), "--status-interval", "5", "--identity", f"replica-{index}"),
        ).start()
        self.all.append(replica)
        return replica

    def holders(self, cluster: controlplane.Cluster) -> dict[int, str | None]:
        leases = json.loads(cluster.kubectl("get", "leases", "-n", "schedulezero-system", "-o", "json").stdout)
        held: dict[int, str | None] = {}
        for lease in leases["items"]:
            name = lease["metadata"]["name"]
            if name.startswith(f"{self.prefix}-shard-"):
                held[int(name.rsplit("-", 1)[1])] = lease["spec"].get("holderIdentity")
        return held

    def stop_all(self) -> None:
        for replica in self.all:
            if replica.popen is not None and replica.popen.poll() is None:
                replica.popen.send_signal(signal.SIGCONT)
                replica.stop(signal.SIGKILL)


def acquisitions(replica: Operator) -> list[tuple[float, int]]:
    """(Unix time, shard) of each shard the replica acquired, from its log."""
    return _logged(replica, r"shard (\d+) acquired")


def releases(replica: Operator) -> list[tuple[float, int]]:
    """(Unix time, shard) of each shard the replica gave up with its Lease released, from its log."""
    return _logged(replica, r"shard (\d+) lost: released")


def _logged(replica: Operator, pattern: str) -> list[tuple[float, int]]:
    found = []
    for line in replica.output().splitlines():
        match = re.match(r"\[(\S+ \S+)\] .*" + pattern, line)
        if match:
            moment = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").astimezone()
            found.append((moment.timestamp(), int(match[2])))
    return found


def proxied_kubeconfig(kubeconfig: pathlib.Path, tunnel: proxy.Proxy, path: pathlib.Path) -> pathlib.Path:
    config = yaml.safe_load(kubeconfig.read_text())
    server = urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"])
    config["clusters"][0]["cluster"]["server"] = f"{server.scheme}://127.0.0.1:{tunnel.port}"
    path.write_text(yaml.safe_dump(config))
    return path


def server_address(kubeconfig: pathlib.Path) -> tuple[str, int]:
    server = urllib.parse.urlsplit(yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
    assert server.hostname is not None
    assert server.port is not None
    return server.hostname, server.port


POLICIES = ("Forbid", "Replace", "Allow")


def schedules(count: int, *, every: str = "1s") -> str:
    """``count`` Schedules ``@every`` ``every``, as one kubectl List, under each concurrencyPolicy in turn."""
    documents = [
        {
            "apiVersion": "schedulezero.io/v1alpha1",
            "kind": "Schedule",
            "metadata": {"name": f"beat-{i:03d}"},
            "spec": {
                "handler": "probe",
                "method": "tick",
                "schedule": f"@every {every}",
                "catchUpPolicy": "All",
                "concurrencyPolicy": POLICIES[i % len(POLICIES)],
            },
        }
        for i in range(count)
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})


def handler(endpoint: str) -> str:
    return json.dumps(
        {"apiVersion": "schedulezero.io/v1alpha1", "kind": "Handler", "metadata": {"name": "probe"},
         "spec": {"endpoint": endpoint}}
    )  # fmt: skip


def test_replicas_share_the_shards_and_each_run_happens_once(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    probe_handler: processes.HandlerProcess,
    journal: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    replicas = Replicas(system_kubeconfigs["operator"], namespace, tmp_path)
    try:
        for _ in range(2):
            replicas.start()
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=handler(probe_handler.endpoint))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=schedules(20))

        def shared() -> dict[int, str | None] | None:
            held = replicas.holders(cluster)
            owners = collections.Counter(holder for holder in held.values() if holder)
            return held if sorted(owners.values()) == [2, 2] else None  # a shard given up but not yet taken: wait

        held = waiting.eventually(shared, timeout=60)
        assert set(held.values()) == {"replica-0", "replica-1"}
        time.sleep(8)
    finally:
        for replica in replicas.all:
            assert replica.stop() == 0, replica.output()[-3000:]
    counts = processes.executions(probe_handler.endpoint, prefix=f"{namespace}/")
    assert counts
    assert len({schedule for schedule, _ in counts}) == 20
    sent = deliveries.by_run(deliveries.read(journal), prefix=f"{namespace}/")
    assert not deliveries.double_fired(sent), list(deliveries.double_fired(sent).items())[:3]
    # A shard given up to the second replica moves without a final checkpoint: the times its first owner may
    # have sent since its last one go out again marked as re-sends, which only a handler without its reply
    # cache (as here) runs twice. Nothing else may run twice.
    resent = {run for run, d in sent.items() if any(delivery.resent for delivery in d)}
    twice = {key for key, count in counts.items() if count > 1}
    assert twice <= resent, sorted(twice - resent)[:10]


JOINED = re.compile(r"saw (\d+) of the (\d+) Schedules listed at start")


def test_a_replica_takes_shards_only_once_it_has_seen_every_schedule(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    probe_handler: processes.HandlerProcess,
    tmp_path: pathlib.Path,
) -> None:
    """A replica still receiving its initial listing would take over Schedules it has not seen, and fire
    them only once the listing is through; it stays out of the election until then, and reports ready
    (``/readyz``) only once in it. A rolling update waits for that before it stops an old replica (as here), so
    the departing replica's shards go to replicas that know every Schedule."""
    replicas = Replicas(system_kubeconfigs["operator"], namespace, tmp_path)
    count = 800
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=handler(probe_handler.endpoint))
        # Hourly: the test is about who holds what, not about runs.
        cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=schedules(count, every="1h"))
        first, second = replicas.start(), replicas.start()

        def shared() -> bool:  # the first to join takes every shard, then gives half to the second
            owners = collections.Counter(holder for holder in replicas.holders(cluster).values() if holder)
            return sorted(owners.values()) == [2, 2]

        waiting.eventually(shared, timeout=90)
        port = controlplane.free_port()
        newcomer = replicas.start(metrics_port=port)
        answers = readiness_until_ready(f"http://127.0.0.1:{port}/readyz", newcomer)
        readied = time.time()
        assert first.stop() == 0, first.output()[-3000:]  # a rolling update: the old one goes once the new is ready
        waiting.eventually(lambda: "replica-2" in replicas.holders(cluster).values(), timeout=90)
        waiting.eventually(lambda: "replica-0" not in replicas.holders(cluster).values(), timeout=30)
    finally:
        for replica in replicas.all:
            if replica.popen is not None and replica.popen.poll() is None:
                assert replica.stop() == 0, replica.output()[-3000:]
    for replica in (first, second, newcomer):
        lines = replica.output().splitlines()
        joined = [i for i, line in enumerate(lines) if JOINED.search(line)]
        acquired = [i for i, line in enumerate(lines) if re.search(r"shard \d+ acquired", line)]
        assert joined, replica.output()[-3000:]
        match = JOINED.search(lines[joined[0]])
        assert match is not None
        assert match[1] == match[2] == str(count), lines[joined[0]]
        assert acquired, replica.output()[-3000:]
        assert joined[0] < acquired[0], "a shard was taken before every Schedule was seen"
    # Not ready while joining (the listing of 800 takes far longer than a poll), ready once in the election.
    assert any(code == 503 and "joining the election" in body for code, body in answers), answers[:3]
    assert answers[-1] == (200, "in the election"), answers[-3:]
    joined_at = _logged(newcomer, JOINED.pattern)
    assert joined_at, newcomer.output()[-3000:]
    assert joined_at[0][0] <= readied, (joined_at, readied)


def readiness_until_ready(url: str, replica: Operator) -> list[tuple[int, str]]:
    """``/readyz`` polled from the replica's start until it answers 200: every (status, body) seen."""
    answers: list[tuple[int, str]] = []

    def ready() -> bool:
        assert replica.popen is not None
        assert replica.popen.poll() is None, replica.output()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answers.append((response.status, response.read().decode().strip()))
        except urllib.error.HTTPError as error:
            answers.append((error.code, error.read().decode().strip()))
        except OSError:  # not listening yet
            return False
        return answers[-1][0] == 200

    waiting.eventually(ready, timeout=90, interval=0.02)
    return answers


# Takeover times for these tests' Lease timing (lease 6 s, renew deadline 4 s, retry 1 s). A SIGKILL's shards are
# taken once the Lease has not changed for the lease duration, counted from its last renew: that renew came a
# retry period before the kill, or a little more when the killed replica's rounds ran late on a loaded machine, so
# no sooner than 3 s (a takeover sooner than that would mean expiry was not waited for). A SIGTERM releases them
# once the replica has stopped (its statuses written, however long that takes: a performance matter, measured by
# bench_failover), and another takes them at its next round: within 5 s of the release, well before a Lease left
# to expire could be taken. The upper bounds leave room for a loaded machine.
SIGKILL_TAKEOVER = (3.0, 15.0)
SIGTERM_TAKEOVER = (0.0, 5.0)
"""Seconds from the release the stopping replica logged to the next owner's acquisition."""


def test_every_run_happens_once_through_kills_pauses_partitions_and_a_rolling_restart(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    probe_handler: processes.HandlerProcess,
    journal: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    kubeconfig = system_kubeconfigs["operator"]
    tunnel = proxy.Proxy(server_address(kubeconfig))
    replicas = Replicas(kubeconfig, namespace, tmp_path)
    failovers: list[str] = []
    takeovers: list[tuple[str, float]] = []
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=handler(probe_handler.endpoint))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=schedules(100))
        # The replica to be cut off starts first, so that it holds shards when the cut comes.
        cut_off = replicas.start(kubeconfig=proxied_kubeconfig(kubeconfig, tunnel, tmp_path / "proxied"))
        waiting.eventually(lambda: any(replicas.holders(cluster).values()), timeout=60)
        replicas.start()
        replicas.start()

        def spread() -> bool:  # every shard held, by the cut-off replica and at least one other
            held = replicas.holders(cluster)
            return (
                all(held.values())
                and len(held) == SHARDS
                and len(set(held.values())) >= 2
                and "replica-0" in held.values()
            )

        waiting.eventually(spread, timeout=120)
        time.sleep(5)
        start = datetime.datetime.now(datetime.UTC)

        def holding(replica: Operator) -> list[int]:
            identity = f"replica-{replicas.all.index(replica)}"
            return [s for s, h in replicas.holders(cluster).items() if h == identity]

        def moved_away(shards: list[int], gone: str) -> bool:
            held = replicas.holders(cluster)
            return all(held[s] not in (None, gone) for s in shards)

        # 1. SIGKILL of a replica holding shards, twice; a new replica replaces each.
        for _ in range(2):
            victim = next(r for r in live(replicas) if r is not cut_off and holding(r))
            shards, killed_at, gone = holding(victim), time.time(), name_of(replicas, victim)
            victim.stop(signal.SIGKILL)
            replicas.start()
            waiting.eventually(lambda: moved_away(shards, gone), timeout=60)  # noqa: B023
            taken = _taken(replicas, shards, killed_at, by_others_than=victim)
            failovers.append(f"SIGKILL: shards {shards} taken over {_show(taken)}")
            takeovers += [("SIGKILL", seconds) for seconds in taken.values()]
            time.sleep(4)
        # 2. SIGSTOP of a holder until its shards have moved, then SIGCONT: it must fire none of them.
        paused = next(r for r in live(replicas) if r is not cut_off and holding(r))
        assert paused.popen is not None
        shards, gone = holding(paused), name_of(replicas, paused)
        paused.popen.send_signal(signal.SIGSTOP)
        try:
            waiting.eventually(lambda: moved_away(shards, gone), timeout=30)
        finally:
            paused.popen.send_signal(signal.SIGCONT)
        failovers.append(f"SIGSTOP: shards {shards} of {gone} moved while it was paused")
        time.sleep(5)
        # 3. A replica cut off from the API server (its connections blackholed) until its shards have moved.
        shards, gone = holding(cut_off), name_of(replicas, cut_off)
        assert shards, f"{gone} holds no shard to lose at the cut: {replicas.holders(cluster)}"
        assert tunnel.established, "the cut-off replica has no connection through the proxy to cut"
        tunnel.cut()
        try:
            waiting.eventually(lambda: moved_away(shards, gone), timeout=30)
        finally:
            tunnel.heal()
        failovers.append(f"cut: shards {shards} of {gone} moved while it was cut off")
        time.sleep(6)
        # 4. A rolling restart: each live replica replaced by a new one, then stopped with SIGTERM.
        for old in live(replicas):
            replicas.start()
            time.sleep(2)
            stopped_at, shards = time.time(), holding(old)
            assert old.stop() == 0, old.output()[-3000:]
            if shards:
                waiting.eventually(lambda: all(replicas.holders(cluster)[s] for s in shards), timeout=30)  # noqa: B023
                taken = _taken(replicas, shards, stopped_at, by_others_than=old)
                # A shard can also be lost during the stop (a renew late on a loaded machine): it is then taken
                # at expiry, as after a kill. The ones released must be taken within the bound.
                released = {shard: moment for moment, shard in releases(old) if moment >= stopped_at}
                assert released, f"{name_of(replicas, old)} held {shards} and released none of them"
                after = {s: taken[s] - (released[s] - stopped_at) for s in shards if s in released and s in taken}
                failovers.append(f"SIGTERM: shards {shards} taken over {_show(taken)}, {_show(after)} after release")
                takeovers += [("SIGTERM", seconds) for seconds in after.values()]
        time.sleep(6)
        end = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=4)
    finally:
        replicas.stop_all()
        tunnel.close()
    logs = "\n".join(f"  {r.log}" for r in replicas.all)
    report = "\n".join(failovers) + f"\nreplica logs:\n{logs}\ndelivery journal: {journal}"
    print(report)

    def in_window(nominal: str) -> bool:
        return start <= datetime.datetime.fromisoformat(nominal) <= end

    sent = deliveries.by_run(deliveries.read(journal), prefix=f"{namespace}/")
    window = {run: d for run, d in sent.items() if in_window(run[1])}
    doubled = deliveries.double_fired(window)
    assert not doubled, f"{len(doubled)} runs fired twice, e.g. {list(doubled.items())[:3]}\n{report}"
    # A re-send is allowed only where the previous owner's deliveries all came before the re-sender took the
    # Schedule's shard over: fencing kept the old owner from sending once the new one could.
    acquired = {name_of(replicas, r): acquisitions(r) for r in replicas.all}
    late = [run for run, d in window.items() if not _before_takeover(run, d, acquired)]
    assert not late, f"{len(late)} runs sent by an old owner after the takeover, e.g. {late[:3]}\n{report}"
    # With the reply cache off, a run executes once per delivery: only a documented re-send may run it again.
    counts = processes.executions(probe_handler.endpoint, prefix=f"{namespace}/")
    resent = {run for run, d in window.items() if any(delivery.resent for delivery in d)}
    executed_twice = {key: counts[key] for key in counts if in_window(key[1]) and counts[key] > 1}
    assert set(executed_twice) <= resent, f"runs executed twice without a re-send: {executed_twice}\n{report}"
    print(f"{len(window)} runs in the window, {len(resent)} re-sent after a takeover, {len(executed_twice)} twice")
    gaps = []
    one = datetime.timedelta(seconds=1)
    for i in range(100):
        seen = sorted(datetime.datetime.fromisoformat(n) for s, n in window if s == f"{namespace}/beat-{i:03d}")
        bounds = [start, *seen, end]
        worst = max((b - a).total_seconds() for a, b in itertools.pairwise(bounds))
        if worst > 1.0:
            missing = [f"{a:%H:%M:%S.%f}..{b:%H:%M:%S.%f}" for a, b in itertools.pairwise(bounds) if b - a > one]
            gaps.append((i, POLICIES[i % len(POLICIES)], worst, missing))
    assert not gaps, f"runs missing (Schedule, policy, longest gap in s, between): {gaps[:10]}\n{report}"
    bounds = {"SIGKILL": SIGKILL_TAKEOVER, "SIGTERM": SIGTERM_TAKEOVER}
    slow = [
        (kind, round(seconds, 1)) for kind, seconds in takeovers if not bounds[kind][0] <= seconds <= bounds[kind][1]
    ]
    assert not slow, f"takeovers outside the documented bounds {bounds}: {slow}\n{report}"


def _before_takeover(
    run: tuple[str, str], sent: list[deliveries.Delivery], acquired: dict[str, list[tuple[float, int]]]
) -> bool:
    """Whether every first-hand delivery of ``run`` came before its re-sender acquired the run's shard."""
    resends = [d for d in sent if d.resent]
    if not resends:
        return True
    namespace, name = run[0].split("/", 1)
    shard = election.shard_of(namespace, name, SHARDS)
    taker = resends[0].sender or ""
    took = max((t for t, s in acquired.get(taker, []) if s == shard and t <= resends[0].at), default=None)
    return took is not None and all(d.at < took for d in sent if not d.resent)


def live(replicas: Replicas) -> list[Operator]:
    return [r for r in replicas.all if r.popen is not None and r.popen.poll() is None]


def name_of(replicas: Replicas, replica: Operator) -> str:
    return f"replica-{replicas.all.index(replica)}"


def _taken(replicas: Replicas, shards: list[int], since: float, *, by_others_than: Operator) -> dict[int, float]:
    """Seconds from ``since`` to each shard's acquisition by a replica other than ``by_others_than``, from their
    logs (the stopping replica itself may take a shard back in a round just before its stop, when a renew came
    late on a loaded machine)."""
    times: dict[int, float] = {}
    for replica in replicas.all:
        if replica is by_others_than:
            continue
        for moment, shard in acquisitions(replica):
            if shard in shards and moment >= since and shard not in times:
                times[shard] = moment - since
    return times


def _show(taken: dict[int, float]) -> str:
    return ", ".join(f"{shard}: {seconds:.1f} s" for shard, seconds in sorted(taken.items()))
