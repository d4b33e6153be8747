"""Status, checkpoints and Leases edited by someone else: no run lost, none delivered twice, none at a time that
is not the Schedule's; the user is told, and the damaged object is written back by its owner.

Real API server, real operator replicas, and a handler whose reply cache is off (``--reply-cache-size 0``),
so that every second delivery of a run executes and shows in its count, and which journals every delivery
with its sender.
"""

from __future__ import annotations

import collections
import datetime
import json
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from schedulezero_operator import election
from tests.e2e.test_ha import SHARDS, Replicas, handler, proxied_kubeconfig, server_address
from tests.support import controlplane, deliveries, processes, proxy, waiting

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"
SYSTEM = "schedulezero-system"
UTC = datetime.UTC
FAR = "2099-01-01T00:00:00Z"
FAR_MS = 4070908800000


@pytest.fixture
def journal(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "deliveries.jsonl"


@pytest.fixture
def uncached_handler(tmp_path: pathlib.Path, journal: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    """The probe handler with no reply cache, so that a run delivered twice executes twice, and a journal of
    every delivery: who sent it, and whether as a re-send."""
    args = ("--reply-cache-size", "0", "--journal", str(journal))
    with processes.running_handler(PROBE, tmp_path, *args) as process:
        yield process


def named(namespace: str, prefix: str, shard: int) -> str:
    """A Schedule name that falls into ``shard``."""
    return next(f"{prefix}-{i}" for i in range(1000) if election.shard_of(namespace, f"{prefix}-{i}", SHARDS) == shard)


def schedule(name: str, *, every: int, policy: str = "Allow") -> dict[str, Any]:
    return {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": name},
        "spec": {
            "handler": "probe",
            "method": "tick",
            "schedule": f"@every {every}s",
            "catchUpPolicy": "All",
            "concurrencyPolicy": policy,
        },
    }


def get(cluster: controlplane.Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def checkpoint(cluster: controlplane.Cluster, replicas: Replicas, shard: int) -> dict[str, Any] | None:
    found = cluster.kubectl(
        "get", "configmap", f"{replicas.prefix}-checkpoint-{shard}", "-n", SYSTEM, "-o", "json", check=False
    )
    return json.loads(found.stdout) if found.returncode == 0 else None


def events(cluster: controlplane.Cluster, namespace: str, reason: str) -> dict[str, str]:
    """The Events of ``reason`` in the namespace: object name to message."""
    found = get(cluster, "events", "-n", namespace, "--field-selector", f"reason={reason}")
    return {e["involvedObject"]["name"]: e["message"] for e in found["items"] if e["type"] == "Warning"}


def holders(cluster: controlplane.Cluster, replicas: Replicas) -> dict[int, str | None]:
    return replicas.holders(cluster)


def nominals(counts: collections.Counter[tuple[str, str]], namespace: str, name: str) -> list[datetime.datetime]:
    return sorted(datetime.datetime.fromisoformat(n) for s, n in counts if s == f"{namespace}/{name}")


def judge(
    counts: collections.Counter[tuple[str, str]],
    namespace: str,
    created: dict[str, datetime.datetime],
    periods: dict[str, int],
    start: datetime.datetime,
    end: datetime.datetime,
    *,
    gapless: set[str],
    fired: dict[tuple[str, str], list[deliveries.Delivery]] | None = None,
) -> None:
    """Every run at a time of its Schedule, none twice in [start, end], and none missing there for ``gapless``.

    Given ``fired`` (the handler's deliveries, judged by ``deliveries.double_fired``), twice means delivered
    twice by two replicas each firing the run, rather than executed twice: a run the previous holder of a
    shard may have sent after its last checkpoint is sent again by design, marked as a re-send, and without a
    reply cache it executes again.
    """
    foreign = [
        (s, n)
        for s, n in counts
        if s.startswith(f"{namespace}/")
        and (
            (moment := datetime.datetime.fromisoformat(n)) < created[s.split("/", 1)[1]]
            or (moment - created[s.split("/", 1)[1]]).total_seconds() % periods[s.split("/", 1)[1]] != 0
            or moment > datetime.datetime.now(UTC)
        )
    ]
    assert not foreign, f"{len(foreign)} runs at times that are not their Schedule's, e.g. {foreign[:5]}"

    def within(run: tuple[str, str]) -> bool:
        return start <= datetime.datetime.fromisoformat(run[1]) <= end

    if fired is None:
        twice: dict[Any, Any] = {key: n for key, n in counts.items() if n > 1 and within(key)}
    else:
        twice = {key: sent for key, sent in deliveries.double_fired(fired).items() if within(key)}
    assert not twice, f"{len(twice)} runs twice, e.g. {list(twice.items())[:3]}"
    lost = {}
    for name in gapless:
        period = datetime.timedelta(seconds=periods[name])
        first = created[name] + period * -(-(start - created[name]) // period)
        due = [first + k * period for k in range(int((end - first) / period) + 1)]
        ran = set(nominals(counts, namespace, name))
        missing = [f"{t:%H:%M:%S}" for t in due if t not in ran]
        if missing:
            lost[name] = missing
    assert not lost, f"runs lost: {lost}"


def test_tampered_status_and_checkpoints_neither_lose_nor_double_nor_invent_runs(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    uncached_handler: processes.HandlerProcess,
    journal: pathlib.Path,
    api_client: kubernetes.client.ApiClient,
    tmp_path: pathlib.Path,
) -> None:
    """The owner of shard 0 is frozen; meanwhile someone gives a Forbid Schedule a run in flight in 2099 and
    300 in 1970, another Schedule a lastScheduleTime in 2099, and a third, in the shard's checkpoint, a
    lastScheduled in 2099 and 200 runs in flight in 1970, among 935 KB of entries of no Schedule; and deletes
    the checkpoint of a shard the other replica holds. Then the frozen owner is killed, and the other takes
    shard 0 over from what it finds."""
    forbid, late, checked = named(namespace, "forbid", 0), named(namespace, "late", 0), named(namespace, "ckpt", 0)
    fillers = [named(namespace, "beat", shard) for shard in range(SHARDS)]
    periods = {forbid: 1, late: 1, checked: 10, **dict.fromkeys(fillers, 1)}
    items = [schedule(forbid, every=1, policy="Forbid"), schedule(late, every=1), schedule(checked, every=10)]
    items += [schedule(name, every=1) for name in fillers]
    replicas = Replicas(system_kubeconfigs["operator"], namespace, tmp_path)
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=handler(uncached_handler.endpoint))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                                                 "items": items}))  # fmt: skip
        replicas.start()
        replicas.start()

        def shared() -> dict[int, str | None] | None:
            held = holders(cluster, replicas)
            counted = collections.Counter(h for h in held.values() if h)
            return held if sorted(counted.values()) == [2, 2] else None

        waiting.eventually(shared, timeout=90)
        objects = {s["metadata"]["name"]: s for s in get(cluster, "schedules", "-n", namespace)["items"]}
        created = {name: datetime.datetime.fromisoformat(o["metadata"]["creationTimestamp"]) for name, o in
                   objects.items()}  # fmt: skip
        uid = {name: o["metadata"]["uid"] for name, o in objects.items()}
        time.sleep(3)
        start = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(seconds=1)

        def settled() -> bool:
            """The checked Schedule's status shows its last run, and its next is seconds off: its status alone
            then says exactly where it got to, as its checkpoint entry, about to be damaged, will not."""
            found = get(cluster, "schedule", checked, "-n", namespace).get("status") or {}
            last = found.get("lastScheduleTime")
            if not last or found.get("active"):
                return False
            age = (datetime.datetime.now(UTC) - datetime.datetime.fromisoformat(last)).total_seconds()
            return age < 6 and any(r.get("scheduledTime") == last for r in found.get("runs") or [])

        def exact() -> bool:
            """With the owner frozen, whether what it leaves says exactly what it ran of shard 0: its checkpoint
            (and the checked Schedule's status) names every run it started, and no run it started is still to
            come. A takeover from there runs nothing twice, unless someone damaged what it reads."""
            entries = json.loads((checkpoint(cluster, replicas, 0) or {})["data"]["progress.json"])["schedules"]
            last_status = get(cluster, "schedule", checked, "-n", namespace)["status"]["lastScheduleTime"]
            counts = processes.executions(uncached_handler.endpoint, prefix=f"{namespace}/")
            for name in (forbid, late, checked, fillers[0]):
                entry = entries.get(uid[name])
                if entry is None:
                    return False
                if name == checked:
                    last = round(datetime.datetime.fromisoformat(last_status).timestamp() * 1000)
                    flights: set[int] = set()
                else:
                    last, flights = entry[0], set(entry[1] if len(entry) > 1 else [])
                ran = [round(t.timestamp() * 1000) for t in nominals(counts, namespace, name)]
                if any(ms > last or ms in flights for ms in ran):
                    return False
            return True

        for _ in range(30):  # freeze the owner of shard 0 where it leaves an exact account, which is most times
            held = waiting.eventually(shared, timeout=90)
            victim = replicas.all[int(str(held[0]).rsplit("-", 1)[1])]
            assert victim.popen is not None
            kept = next(s for s, h in held.items() if h != held[0])  # its checkpoint is deleted under its owner
            waiting.eventually(lambda: checkpoint(cluster, replicas, 0) and checkpoint(cluster, replicas, kept))  # noqa: B023
            waiting.eventually(settled, timeout=60, interval=0.1)
            time.sleep((0.8 - time.time() % 1) % 1)  # after this second's runs and their checkpoint
            victim.popen.send_signal(signal.SIGSTOP)
            if exact():
                break
            victim.popen.send_signal(signal.SIGCONT)
            time.sleep(3)
        else:
            pytest.fail("the owner never left an exact account")
        survivor = next(r for r in replicas.all if r is not victim)
        # The damage, done fast (the survivor takes shard 0 a lease duration after the owner's last renew).
        custom, core = kubernetes.client.CustomObjectsApi(api_client), kubernetes.client.CoreV1Api(api_client)
        active = [{"runId": "z", "scheduledTime": FAR}]
        active += [
            {"runId": f"x-{i}", "scheduledTime": f"1970-01-01T00:{i // 60:02d}:{i % 60:02d}Z"} for i in range(300)
        ]
        for name, damage in ((forbid, {"active": active}), (late, {"lastScheduleTime": FAR})):
            custom.patch_namespaced_custom_object_status(
                "schedulezero.io", "v1alpha1", namespace, "schedules", name, {"status": damage}
            )
        config_map = core.read_namespaced_config_map(f"{replicas.prefix}-checkpoint-0", SYSTEM)
        progress = json.loads(config_map.data["progress.json"])
        assert uid[checked] in progress["schedules"], progress
        progress["schedules"][uid[checked]] = [FAR_MS, [i * 1000 for i in range(200)]]
        for i in range(17_000):  # 935 KB of entries of no Schedule
            progress["schedules"][f"00000000-0000-4000-8000-{i:012d}"] = [FAR_MS - i]
        config_map.data["progress.json"] = json.dumps(progress, separators=(",", ":"))
        assert 900_000 < len(config_map.data["progress.json"]) < 1_000_000
        core.replace_namespaced_config_map(config_map.metadata.name, SYSTEM, config_map)
        core.delete_namespaced_config_map(f"{replicas.prefix}-checkpoint-{kept}", SYSTEM)
        deleted_at = time.monotonic()
        victim.stop(signal.SIGKILL)

        waiting.eventually(lambda: set(holders(cluster, replicas).values()) == {held[kept]}, timeout=60)

        # The damaged objects written back by their owner.
        recreated = waiting.eventually(lambda: checkpoint(cluster, replicas, kept), timeout=30)
        print(f"deleted checkpoint made again within {time.monotonic() - deleted_at:.1f} s")
        assert recreated

        def clean_checkpoint() -> bool:
            found = checkpoint(cluster, replicas, 0)
            if found is None:
                return False
            text = found["data"]["progress.json"]
            entries = json.loads(text)["schedules"]
            mine = entries.get(uid[checked])
            return len(text) < 10_000 and mine is not None and mine[0] < FAR_MS and len(mine) == 1

        waiting.eventually(clean_checkpoint, timeout=30)

        def clean_status() -> bool:
            forbidden = get(cluster, "schedule", forbid, "-n", namespace).get("status") or {}
            later = get(cluster, "schedule", late, "-n", namespace).get("status") or {}
            times = [a["scheduledTime"] for a in forbidden.get("active") or []]
            return not any(t.startswith(("2099", "1970")) for t in times) and not str(
                later.get("lastScheduleTime", "2099")
            ).startswith("2099")

        waiting.eventually(clean_status, timeout=30)
        # The user told, by the new owner.
        waiting.eventually(lambda: {forbid, late} <= set(events(cluster, namespace, "StatusRefused")), timeout=30)
        waiting.eventually(lambda: checked in events(cluster, namespace, "CheckpointRefused"), timeout=30)
        assert "2099" in events(cluster, namespace, "StatusRefused")[late]
        time.sleep(12)
        end = datetime.datetime.now(UTC).replace(microsecond=0) - datetime.timedelta(seconds=4)
    finally:
        replicas.stop_all()
    counts = processes.executions(uncached_handler.endpoint, prefix=f"{namespace}/")
    judge(counts, namespace, created, periods, start, end, gapless={late, checked, *fillers})
    fired = deliveries.by_run(deliveries.read(journal), prefix=f"{namespace}/")
    judge(counts, namespace, created, periods, start, end, gapless=set(), fired=fired)
    # The Forbid Schedule is not held by a run in 2099: it runs on after the takeover.
    after = [t for t in nominals(counts, namespace, forbid) if t > end - datetime.timedelta(seconds=10)]
    assert len(after) >= 5, nominals(counts, namespace, forbid)[-20:]
    survivor_log = survivor.output()
    assert "HTTP response headers" not in survivor_log, survivor_log[-3000:]


def test_deleted_and_reassigned_leases_never_let_two_replicas_fire_one_shard(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    uncached_handler: processes.HandlerProcess,
    journal: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    """Three replicas on four shards, some below their share and so ready to take any shard. A holder is cut
    off from the API server and its Leases deleted; later, with everyone connected, a Lease is edited to name
    a replica below its share. Neither lets two replicas fire a shard at once, and every run happens."""
    kubeconfig = system_kubeconfigs["operator"]
    tunnel = proxy.Proxy(server_address(kubeconfig))
    replicas = Replicas(kubeconfig, namespace, tmp_path)
    names = [named(namespace, "beat", shard) for shard in range(SHARDS)]
    names += [named(namespace, "tock", shard) for shard in range(SHARDS)]
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=handler(uncached_handler.endpoint))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                        "items": [schedule(name, every=1) for name in names]}))  # fmt: skip
        replicas.start(kubeconfig=proxied_kubeconfig(kubeconfig, tunnel, tmp_path / "proxied"))

        def first_holds_all() -> bool:
            return set(holders(cluster, replicas).values()) == {"replica-0"} and len(holders(cluster, replicas)) == 4

        waiting.eventually(first_holds_all, timeout=60)  # the cut-off replica first, so that it holds shards
        replicas.start()
        replicas.start()

        def shared() -> dict[int, str | None] | None:  # the first gives up half, to the others
            held = holders(cluster, replicas)
            counted = collections.Counter(h for h in held.values() if h)
            return held if counted["replica-0"] == 2 and sum(counted.values()) == SHARDS else None

        held = waiting.eventually(shared, timeout=90)
        objects = {s["metadata"]["name"]: s for s in get(cluster, "schedules", "-n", namespace)["items"]}
        created = {name: datetime.datetime.fromisoformat(o["metadata"]["creationTimestamp"]) for name, o in
                   objects.items()}  # fmt: skip
        time.sleep(3)
        start = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(seconds=1)

        # 1. The holder cut off, its Leases deleted: the idle replica must not take them at once.
        cut_shards = [s for s, h in held.items() if h == "replica-0"]
        tunnel.cut()
        for shard in cut_shards:
            cluster.kubectl("delete", "lease", f"{replicas.prefix}-shard-{shard}", "-n", SYSTEM)
        waiting.eventually(lambda: all(holders(cluster, replicas).get(s) for s in cut_shards), timeout=60)
        time.sleep(4)
        tunnel.heal()
        time.sleep(8)

        # 2. A Lease edited to name a replica below its share, which did not take it.
        now_held = holders(cluster, replicas)
        counted = collections.Counter(h for h in now_held.values() if h)
        idle = min((f"replica-{i}" for i in range(3)), key=lambda r: counted[r])  # below its share: it takes shards
        shard, holder = next((s, h) for s, h in now_held.items() if h and h != idle)
        cluster.kubectl("patch", "lease", f"{replicas.prefix}-shard-{shard}", "-n", SYSTEM, "--type=merge",
                        "-p", json.dumps({"spec": {"holderIdentity": idle}}))  # fmt: skip
        time.sleep(12)
        end = datetime.datetime.now(UTC).replace(microsecond=0) - datetime.timedelta(seconds=4)
        # The Leases rewritten by their owners: every shard held, each Lease named by who renews it.
        waiting.eventually(lambda: all(holders(cluster, replicas).get(s) for s in range(SHARDS)), timeout=30)
        lost = [r.output() for r in replicas.all]
        warned = waiting.eventually(lambda: events(cluster, SYSTEM, "ShardLeaseEdited"), timeout=30)
    finally:
        replicas.stop_all()
        tunnel.close()
    counts = processes.executions(uncached_handler.endpoint, prefix=f"{namespace}/")
    fired = deliveries.by_run(deliveries.read(journal), prefix=f"{namespace}/")
    judge(counts, namespace, created, dict.fromkeys(names, 1), start, end, gapless=set(names), fired=fired)
    # What the holder of the edited Lease said as it dropped the shard: in its log, and in a Warning on the Lease.
    assert any(f"shard {shard} lost: its Lease names {idle}" in log for log in lost), [log[-2000:] for log in lost]
    assert f"{replicas.prefix}-shard-{shard}" in warned, warned
    assert f"dropped at once by {holder}: its Lease names {idle}" in warned[f"{replicas.prefix}-shard-{shard}"]
