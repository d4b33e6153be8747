"""A status write carries the resourceVersion its writer last saw, so a stale writer cannot overwrite a newer one.

The case it guards: a replica renders a Schedule's status while it still owns
the shard, then is paused or cut off while the write is under way; the new
owner takes over and writes; the old write arriving after must not undo it.
"""

from __future__ import annotations

import json

import pytest

from schedulezero_operator import kubeapi, sinks
from schedulezero_operator.sinks import ScheduleKey
from tests.e2e.test_operator import apply, get, schedule_doc
from tests.support import controlplane

pytestmark = pytest.mark.e2e


async def test_a_write_against_an_older_version_is_refused_and_one_against_the_latest_lands(
    cluster: controlplane.Cluster, namespace: str
) -> None:
    apply(cluster, namespace, schedule_doc("guarded", schedule="@hourly"))
    key = ScheduleKey(namespace, "guarded")
    api = kubeapi.Api(await kubeapi.connect(str(cluster.kubeconfig)))
    try:
        old_owner = kubeapi.ScheduleStatusSink(api)
        old_owner.seen(key, get(cluster, namespace, "sched", "guarded")["metadata"]["resourceVersion"])
        await old_owner.write_status(key, {"counters": {"succeeded": 1}})
        # The new owner writes meanwhile, from what its own watch showed it.
        new_owner = kubeapi.ScheduleStatusSink(api)
        new_owner.seen(key, get(cluster, namespace, "sched", "guarded")["metadata"]["resourceVersion"])
        await new_owner.write_status(key, {"counters": {"succeeded": 2}})
        with pytest.raises(sinks.WriteConflict):
            await old_owner.write_status(key, {"counters": {"succeeded": 1, "failed": 7}})
        assert get(cluster, namespace, "sched", "guarded")["status"]["counters"]["succeeded"] == 2
        assert "failed" not in get(cluster, namespace, "sched", "guarded")["status"]["counters"]
        # A spec edited by a user is a newer version too: seen through the watch, the next write lands.
        cluster.kubectl("patch", "sched", "guarded", "-n", namespace, "--type=merge", "-p",
                        json.dumps({"spec": {"schedule": "@daily"}}))  # fmt: skip
        with pytest.raises(sinks.WriteConflict):
            await new_owner.write_status(key, {"counters": {"succeeded": 3}})
        new_owner.seen(key, get(cluster, namespace, "sched", "guarded")["metadata"]["resourceVersion"])
        await new_owner.write_status(key, {"counters": {"succeeded": 3}})
        assert get(cluster, namespace, "sched", "guarded")["status"]["counters"]["succeeded"] == 3
    finally:
        await api.close()
