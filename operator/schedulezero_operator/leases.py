"""The election's Leases (``coordination.k8s.io/v1``) in the operator's namespace."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from schedulezero_operator import election, kubeapi

MEMBER_LABEL = "schedulezero.io/member"
"""On the replicas' heartbeat Leases, so they can be listed apart from the shards'."""
SHARD_LABEL = "schedulezero.io/shard"
WATCH_SECONDS = 300
"""How long one watch request of the Leases lasts (server side) before it is made again."""


class KubeLeases(kubeapi.ElectionStore):
    """``election.LeaseStore`` on the Kubernetes API."""

    api_class = k8s.CoordinationV1Api

    async def get(self, name: str) -> election.LeaseRecord | None:
        try:
            lease = await self._api.read_namespaced_lease(name, self.namespace, _request_timeout=self._timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _record(lease)

    async def create(self, name: str, record: election.LeaseRecord) -> election.LeaseRecord:
        try:
            return _record(
                await self._api.create_namespaced_lease(
                    self.namespace, self._lease(name, record), _request_timeout=self._timeout
                )
            )
        except ApiException as error:
            if error.status == 409:
                raise election.Conflict(name) from None
            raise

    async def update(self, name: str, record: election.LeaseRecord) -> election.LeaseRecord:
        lease = self._lease(name, record)
        lease.metadata.resource_version = record.version  # the precondition: fails if it moved on since
        try:
            return _record(
                await self._api.replace_namespaced_lease(name, self.namespace, lease, _request_timeout=self._timeout)
            )
        except ApiException as error:
            if error.status == 409:
                raise election.Conflict(name) from None
            raise

    def _lease(self, name: str, record: election.LeaseRecord) -> k8s.V1Lease:
        member = name.startswith(f"{self._prefix}-member-")
        labels = {MEMBER_LABEL: "true"} if member else {SHARD_LABEL: "true"}
        return k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name=name, namespace=self.namespace, labels=labels), spec=_spec(record)
        )

    async def list_all(self) -> dict[str, election.LeaseRecord]:
        listed = await self._api.list_namespaced_lease(self.namespace, _request_timeout=self._timeout)
        mine = (f"{self._prefix}-member-", f"{self._prefix}-shard-")  # not another installation's in this namespace
        return {lease.metadata.name: _record(lease) for lease in listed.items if lease.metadata.name.startswith(mine)}

    async def watch(self, changed: Callable[[str, str | None], None]) -> None:
        """One watch request of the namespace's Leases, read as raw JSON lines (a handful of events a second:
        the renews), reporting those of this election."""
        mine = (f"{self._prefix}-member-", f"{self._prefix}-shard-")
        response = await self._api.list_namespaced_lease(
            self.namespace, watch=True, timeout_seconds=WATCH_SECONDS, _preload_content=False,
            _request_timeout=WATCH_SECONDS + 30,
        )  # fmt: skip
        try:
            async for line in response.content:
                event = json.loads(line)
                if event.get("type") == "ERROR":  # e.g. 410 Gone: the caller watches again from now
                    return
                lease = event.get("object") or {}
                name = str((lease.get("metadata") or {}).get("name", ""))
                if name.startswith(mine):
                    holder = (lease.get("spec") or {}).get("holderIdentity")
                    changed(name, None if event.get("type") == "DELETED" else holder or None)
        finally:
            response.release()

    async def delete(self, name: str) -> None:
        try:
            await self._api.delete_namespaced_lease(name, self.namespace, _request_timeout=self._timeout)
        except ApiException as error:
            if error.status != 404:
                raise


def _spec(record: election.LeaseRecord) -> k8s.V1LeaseSpec:
    renewed = datetime.datetime.fromisoformat(record.renewed) if record.renewed else None
    return k8s.V1LeaseSpec(
        holder_identity=record.holder or None,
        lease_duration_seconds=max(1, round(record.lease_duration)),
        lease_transitions=record.transitions,
        renew_time=renewed,
    )


def _record(lease: Any) -> election.LeaseRecord:
    spec = lease.spec
    renewed = spec.renew_time
    return election.LeaseRecord(
        holder=spec.holder_identity or None,
        lease_duration=float(spec.lease_duration_seconds or 15),
        transitions=int(spec.lease_transitions or 0),
        renewed=renewed.isoformat() if isinstance(renewed, datetime.datetime) else str(renewed or ""),
        version=str(lease.metadata.resource_version),
    )
