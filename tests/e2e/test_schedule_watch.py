"""The operator's own watch of Schedules (schedule_watch.py) against the real API server."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from schedulezero_operator import kubeapi, schedule_watch
from tests.support import controlplane

pytestmark = pytest.mark.e2e


def schedule_doc(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "schedulezero.io/v1alpha1",
            "kind": "Schedule",
            "metadata": {"name": name},
            "spec": {"handler": "probe", "method": "tick", "schedule": "@every 1h"},
        }
    )


def create(cluster: controlplane.Cluster, namespace: str, *names: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(schedule_doc(name) for name in names))


def touch(cluster: controlplane.Cluster, namespace: str, name: str, value: str) -> None:
    cluster.kubectl("annotate", "--overwrite", "-n", namespace, "sched", name, f"test/touched={value}")


class Recorder:
    """What the watch delivered: (type, namespace, name), in order."""

    def __init__(self, namespaces: set[str]) -> None:
        self.namespaces = namespaces
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if meta["namespace"] in self.namespaces:  # the cluster-wide watch sees other tests' Schedules too
            self.events.append((kind, meta["namespace"], meta["name"]))

    def of(self, namespace: str) -> list[tuple[str, str]]:
        return [(kind, name) for kind, ns, name in self.events if ns == namespace]


async def until(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not before the timeout"
        await asyncio.sleep(0.05)


@pytest.fixture
async def api_client(cluster: controlplane.Cluster) -> AsyncIterator[Any]:
    client = await kubeapi.connect(str(cluster.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


async def started(watch: schedule_watch.ScheduleWatch) -> schedule_watch.ScheduleWatch:
    watch.start()
    await asyncio.wait_for(watch.listed.wait(), 30)
    return watch


async def test_created_modified_and_deleted_schedules_reach_the_callback_in_order(
    cluster: controlplane.Cluster, namespace: str, api_client: Any
) -> None:
    create(cluster, namespace, "before")
    seen = Recorder({namespace})
    watch = await started(schedule_watch.ScheduleWatch(api_client, on_event=seen, namespaces=(namespace,)))
    try:
        create(cluster, namespace, "after")
        touch(cluster, namespace, "after", "1")
        touch(cluster, namespace, "before", "1")
        cluster.kubectl("delete", "-n", namespace, "sched", "after")
        expected = [
            ("ADDED", "before"), ("ADDED", "after"), ("MODIFIED", "after"), ("MODIFIED", "before"),
            ("DELETED", "after"),
        ]  # fmt: skip
        await until(lambda: len(seen.events) >= len(expected))
        await asyncio.sleep(0.5)  # nothing more comes
        assert seen.of(namespace) == expected
    finally:
        await watch.stop()


class Pausing(schedule_watch.ScheduleWatch):
    """Stays away after each watch request the server ends, until told to resume: changes made meanwhile
    can only arrive through the resumed watch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended = asyncio.Event()
        self.resume = asyncio.Event()
        self.requests = 0

    async def _watch(self, namespace: str | None, version: str, known: set[tuple[str, str]]) -> str:
        self.requests += 1
        version = await super()._watch(namespace, version, known)
        self.ended.set()
        await self.resume.wait()
        self.resume.clear()
        return version


async def test_a_watch_the_server_ends_resumes_where_it_was_without_repeats_or_losses(
    cluster: controlplane.Cluster, namespace: str, api_client: Any
) -> None:
    create(cluster, namespace, "a", "b")
    seen = Recorder({namespace})
    watch = Pausing(api_client, on_event=seen, namespaces=(namespace,), timeout=1)
    await started(watch)
    try:
        touch(cluster, namespace, "a", "1")  # during the first watch request
        for round_ in range(2, 5):
            await asyncio.wait_for(watch.ended.wait(), 10)
            watch.ended.clear()
            touch(cluster, namespace, "b" if round_ % 2 else "a", str(round_))  # while no watch is open
            create(cluster, namespace, f"c{round_}")
            watch.resume.set()
        await until(lambda: len(seen.events) >= 9)
        await asyncio.sleep(2.5)  # two more renewals: nothing old comes back
        assert watch.requests >= 4
        assert watch.relists == 0
        assert seen.of(namespace) == [
            ("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"),
            ("MODIFIED", "a"), ("ADDED", "c2"),
            ("MODIFIED", "b"), ("ADDED", "c3"),
            ("MODIFIED", "a"), ("ADDED", "c4"),
        ]  # fmt: skip
    finally:
        watch.resume.set()
        await watch.stop()


def etcd_key(namespace: str, name: str) -> str:
    return base64.b64encode(f"/registry/schedulezero.io/schedules/{namespace}/{name}".encode()).decode()


async def test_a_resource_version_too_old_relists_and_reports_what_was_deleted_meanwhile(
    local_control_plane: controlplane.LocalControlPlane | None,
    cluster: controlplane.Cluster,
    namespace: str,
    api_client: Any,
) -> None:
    if local_control_plane is None:
        pytest.skip("changing etcd needs the local control plane, not SCHEDULEZERO_KUBECONFIG")
    create(cluster, namespace, "kept", "vanished")
    seen = Recorder({namespace})
    watch = await started(schedule_watch.ScheduleWatch(api_client, on_event=seen, namespaces=(namespace,)))
    try:
        assert seen.of(namespace) == [("ADDED", "kept"), ("ADDED", "vanished")]
        # Deleted while the API server is away, and etcd's history compacted up to now: the watch comes
        # back with a resourceVersion the server can no longer resume from (410 Gone), and must relist.
        with local_control_plane.apiserver_stopped():
            await asyncio.sleep(0.5)  # the watch notices the server is gone
            deleted = local_control_plane.etcd("kv/deleterange", {"key": etcd_key(namespace, "vanished")})
            assert deleted.get("deleted") == "1", deleted
            revision = int(deleted["header"]["revision"])  # type: ignore[index]
            local_control_plane.etcd("kv/compaction", {"revision": revision, "physical": True})
        await until(lambda: watch.relists >= 1, timeout=90)
        await until(lambda: ("DELETED", "vanished") in seen.of(namespace))
        assert seen.of(namespace) == [
            ("ADDED", "kept"), ("ADDED", "vanished"), ("ADDED", "kept"), ("DELETED", "vanished"),
        ]  # fmt: skip
        create(cluster, namespace, "later")  # and it watches on from the relist
        await until(lambda: ("ADDED", "later") in seen.of(namespace))
    finally:
        await watch.stop()


async def test_only_the_namespaces_named_are_watched_and_none_named_is_every_one(
    cluster: controlplane.Cluster, crds: None, api_client: Any
) -> None:
    first, second, other = (f"t-{uuid.uuid4().hex[:10]}" for _ in range(3))
    for namespace in (first, second, other):
        cluster.kubectl("create", "namespace", namespace)
        create(cluster, namespace, "listed")
    named = Recorder({first, second, other})
    every = Recorder({first, second, other})
    watches = [
        await started(schedule_watch.ScheduleWatch(api_client, on_event=named, namespaces=(first, second))),
        await started(schedule_watch.ScheduleWatch(api_client, on_event=every, page=2)),
    ]
    try:
        for namespace in (first, second, other):
            create(cluster, namespace, "watched")
        await until(lambda: len(every.events) >= 6)
        await asyncio.sleep(0.5)
        assert {(ns, name) for _, ns, name in named.events} == {
            (first, "listed"), (second, "listed"), (first, "watched"), (second, "watched"),
        }  # fmt: skip
        assert sorted(every.events) == sorted(
            [("ADDED", ns, name) for ns in (first, second, other) for name in ("listed", "watched")]
        )
    finally:
        for watch in watches:
            await watch.stop()
