"""A Handler's status from the probes of its replicas.

A Handler with a Service is as many pods as the Service's EndpointSlices
list; one with ``spec.endpoint`` is one. Each is probed; the status lists
them (``pods``), counts them (``replicas``, ``readyReplicas``) and sums them
up in the ``Reachable`` condition: all, some or none of them answered.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

from schedulezero_handler import endpoints as endpoints_
from schedulezero_operator import probe, status


@dataclasses.dataclass(frozen=True)
class Summary:
    status: dict[str, Any]
    """The Handler's status, ready to be written."""
    methods: frozenset[str] | None
    """The methods the reachable replicas expose (all of them, during a rollout); None while unknown."""
    reachable: bool
    """Whether any replica answered."""
    unreachable: list[str]
    """Replicas that did not, as ``pod: error``."""
    params: dict[str, tuple[dict[str, Any], ...]] | None
    """Each method's declared parameters, as the status lists them; None while unknown."""


def summarize(
    address: str,
    pods: Sequence[endpoints_.Endpoint],
    results: Sequence[probe.ProbeResult],
    previous: dict[str, Any],
    *,
    now: datetime.datetime,
) -> Summary:
    """The status of a Handler at ``address`` whose replicas ``pods`` answered the probes ``results``."""
    by_endpoint = {result.endpoint: result for result in results}
    answered = [result for result in results if result.state != "Unreachable"]
    seen = {pod["endpoint"]: pod for pod in previous.get("pods") or () if isinstance(pod, dict)}
    listed, unreachable = [], []
    for pod in pods:
        result = by_endpoint.get(pod.address)
        entry: dict[str, Any] = {"name": pod.pod, "endpoint": pod.address, "ready": pod.ready}
        if result is None or result.state == "Unreachable":
            entry["state"] = "Unreachable"
            entry["message"] = (result.error if result is not None else None) or "not probed yet"
            unreachable.append(f"{pod.pod}: {entry['message']}")
            for kept in ("version", "lastSeenTime"):
                if seen.get(pod.address, {}).get(kept):
                    entry[kept] = seen[pod.address][kept]
        else:
            entry["state"] = result.state
            entry["version"] = result.version or ""
            entry["lastSeenTime"] = status.rfc3339(result.seen)
        listed.append(entry)
    ready = sum(1 for entry in listed if entry["ready"] and entry["state"] != "Unreachable")
    described = answered[0].described if answered else ()
    methods = [_method(m) for m in described] if answered else list(previous.get("methods") or [])
    names: frozenset[str] | None = None
    if answered:
        names = frozenset(name for result in answered for name in result.methods or ())
    elif previous.get("methods") is not None:
        names = frozenset(m["name"] for m in previous.get("methods") or ())
    seen_times = [result.seen for result in answered if result.seen is not None]
    versions = sorted({result.version for result in answered if result.version})
    handler_status: dict[str, Any] = {
        "endpoint": address,
        "state": _state(answered),
        "methods": methods,
        "methodCount": len(methods),
        "version": ", ".join(versions) if versions else previous.get("version"),
        "lastSeenTime": status.rfc3339(max(seen_times)) if seen_times else previous.get("lastSeenTime"),
        "replicas": len(listed),
        "readyReplicas": ready,
        "pods": listed,
        "conditions": [
            _reachable(
                previous, address=address, answered=len(answered), pods=len(listed), unreachable=unreachable, now=now
            )
        ],
    }
    params = {m["name"]: tuple(m.get("params", ())) for m in methods} if (answered or methods) else None
    return Summary(handler_status, names, bool(answered), unreachable, params)


def _state(answered: Sequence[probe.ProbeResult]) -> str:
    if not answered:
        return "Unreachable"
    return "Sleeping" if all(result.state == "Sleeping" for result in answered) else "Active"


def _reachable(
    previous: dict[str, Any],
    *,
    address: str,
    answered: int,
    pods: int,
    unreachable: list[str],
    now: datetime.datetime,
) -> dict[str, Any]:
    if pods == 0:
        status_, reason, message = "False", "NoReplicas", "the Service has no ready endpoints (no pod to call)"
    elif answered == 0:
        status_, reason, message = "False", "Unreachable", "; ".join(unreachable)
    elif answered < pods:
        status_, reason = "True", "SomeReplicasReachable"
        message = f"{answered} of {pods} replicas answered sys.health; not: " + "; ".join(unreachable)
    else:
        status_, reason = "True", "Probed" if pods == 1 else "AllReplicasReachable"
        message = f"answered sys.health at {address}" if pods == 1 else f"all {pods} replicas answered sys.health"
    before = next((c for c in previous.get("conditions") or () if c.get("type") == "Reachable"), None)
    since = before["lastTransitionTime"] if before is not None and before.get("status") == status_ else None
    return {
        "type": "Reachable",
        "status": status_,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": since or status.rfc3339(now.replace(microsecond=0)),
    }


def _method(described: dict[str, Any]) -> dict[str, Any]:
    method: dict[str, Any] = {"name": described["name"]}
    if described.get("doc"):
        method["doc"] = str(described["doc"])[:1024]
    params = [
        {"name": str(p.get("name")), "type": str(p.get("type", "Any")), "required": bool(p.get("required"))}
        | ({"variadic": True} if p.get("variadic") else {})
        for p in described.get("params", [])
        if isinstance(p, dict)
    ]
    if params:
        method["params"] = params
    return method
