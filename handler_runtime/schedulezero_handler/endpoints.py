"""The pods behind a Service, read from its EndpointSlices.

The operator watches EndpointSlices and the conductor lists them; both turn
them into ZeroMQ endpoints here. Slices are plain mappings as the API returns
them, so this module needs no Kubernetes client and the handler runtime stays
free of one.

Conditions follow the EndpointSlice API: an endpoint whose ``ready`` is
unset counts as ready; a terminating one (``serving`` but not ``ready``) gets
no new calls, while calls already sent to it complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SERVICE_LABEL = "kubernetes.io/service-name"
PORT_NAME = "zmq"
"""The port a multi-port Service carries ZeroMQ on, when no port number matches."""


@dataclasses.dataclass(frozen=True, order=True)
class Endpoint:
    """One pod as a ZeroMQ endpoint."""

    address: str
    """``tcp://IP:PORT``, the pod itself rather than the Service's virtual IP."""
    pod: str
    """The pod's name (the endpoint's targetRef), else its IP."""
    ready: bool = True
    """Takes new calls."""
    serving: bool = True
    """Still answers calls, though maybe terminating."""


def _slice_port(ports: Any, service_port: int) -> int | None:
    """The slice's target port for the Service's ``service_port``.

    A slice lists target ports under the Service's port names, not the Service
    port numbers: with one port that is it; with several, the one whose number
    is the Service port (target port = port), else the one named ``zmq``.
    """
    listed = ports if isinstance(ports, list) else []
    tcp = [p for p in listed if isinstance(p, Mapping) and (p.get("protocol") or "TCP") == "TCP"]
    numbered = [p for p in tcp if type(p.get("port")) is int and 0 < p["port"] < 65536]
    if len(numbered) == 1:
        return int(numbered[0]["port"])
    for candidate in numbered:
        if candidate["port"] == service_port:
            return service_port
    for candidate in numbered:
        if candidate.get("name") == PORT_NAME:
            return int(candidate["port"])
    return None


def _address(ip: str, port: int, address_type: str) -> str:
    return f"tcp://[{ip}]:{port}" if address_type == "IPv6" else f"tcp://{ip}:{port}"


def from_slice(body: Mapping[str, Any], *, service_port: int) -> list[Endpoint]:
    """The endpoints of one EndpointSlice; what is malformed is left out, never fatal.

    No kubelet checks a slice that a person or a tool wrote: any field may
    hold anything, and only the entries that make sense become endpoints.
    """
    port = _slice_port(body.get("ports"), service_port)
    entries = body.get("endpoints")
    if port is None or not isinstance(entries, list):
        return []
    address_type = str(body.get("addressType") or "IPv4")
    found = []
    for entry in entries:
        addresses = entry.get("addresses") if isinstance(entry, Mapping) else None
        if not isinstance(addresses, list) or not addresses or not isinstance(addresses[0], str) or not addresses[0]:
            continue
        conditions = entry.get("conditions")
        conditions = conditions if isinstance(conditions, Mapping) else {}
        ready = conditions.get("ready") is not False
        serving = conditions.get("serving", ready) is not False
        ip = addresses[0]
        target = entry.get("targetRef")
        name = target.get("name") if isinstance(target, Mapping) else None
        pod = name if isinstance(name, str) and name else ip
        found.append(Endpoint(_address(ip, port, address_type), pod, ready=ready, serving=serving))
    return found


@dataclasses.dataclass
class ServiceEndpoints:
    """Every EndpointSlice seen, by Service: the current pods of each."""

    slices: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    """(namespace, Service) -> slice name -> the slice."""

    def apply(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        """A slice was added or changed; returns its (namespace, Service), None if it belongs to none."""
        key = _service_of(body)
        if key is not None:
            self.slices.setdefault(key, {})[str(body["metadata"]["name"])] = _compact(body)
        return key

    def delete(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        key = _service_of(body)
        if key is not None:
            named = self.slices.get(key, {})
            named.pop(str(body["metadata"]["name"]), None)
            if not named:
                self.slices.pop(key, None)
        return key

    def endpoints(self, namespace: str, service: str, port: int) -> tuple[Endpoint, ...]:
        """The Service's pods, each once (a pod moving between slices may briefly be in two: ready wins)."""
        merged: dict[str, Endpoint] = {}
        for body in self.slices.get((namespace, service), {}).values():
            for endpoint in from_slice(body, service_port=port):
                known = merged.get(endpoint.address)
                if known is None or (endpoint.ready and not known.ready):
                    merged[endpoint.address] = endpoint
        return tuple(sorted(merged.values()))


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """What ``from_slice`` reads of a slice, and no more: an operator watching every namespace sees
    every Service's slices, and their managedFields and topology hints would be most of its memory."""
    entries = body.get("endpoints")
    kept = ("addresses", "conditions", "targetRef")
    return {
        "addressType": body.get("addressType"),
        "ports": body.get("ports"),
        "endpoints": [
            {field: entry[field] for field in kept if field in entry} if isinstance(entry, Mapping) else entry
            for entry in entries
        ]
        if isinstance(entries, list)
        else entries,
    }


def _service_of(body: Mapping[str, Any]) -> tuple[str, str] | None:
    metadata = body.get("metadata") or {}
    service = (metadata.get("labels") or {}).get(SERVICE_LABEL)
    if not service or not metadata.get("name"):
        return None
    return str(metadata.get("namespace") or ""), str(service)
