"""Which handlers the conductor scrapes: Handler resources in a cluster, or a list in its config.

Both are re-read every scrape round, so a handler that appears or disappears
is picked up without a restart, and a brief API outage only means scraping
the last known set once more. A Handler with ``spec.service`` is scraped pod
by pod, as its Service's EndpointSlices list them (the operator calls them
so too). A Handler with ``spec.curve.secretName`` is called with the CURVE
keys of that Secret, as the operator calls it; given its own issued identity,
the conductor calls a Handler with neither ``spec.curve`` nor
``spec.security: plaintext`` with that identity and the server key of the
Secret the operator issued for it (``NAME-curve``).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import pathlib
import time
from collections import defaultdict
from typing import Any, Protocol

import yaml

from schedulezero_handler import endpoints, security, text

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "schedulezero.io", "v1alpha1", "handlers"
ISSUED_TTL = 30.0
"""Seconds an issued key Secret is believed: after a rotation's promote step, the handler's port serves the
new pair, and scrapes with the old one fail until it is read again."""


@dataclasses.dataclass(frozen=True, order=True)
class Target:
    """One process to scrape: a handler, or one pod of a handler with replicas."""

    handler: str
    """The Handler's name ("namespace/name" in a cluster)."""
    endpoint: str
    pod: str = ""
    """The pod's name, for a Handler reached through its Service's pods; empty otherwise."""


class Discovery(Protocol):
    async def targets(self) -> list[Target]:
        """Every process to scrape now."""

    async def curves(self) -> dict[str, security.CurveClient]:
        """Endpoint -> CURVE keys, for the endpoints of the last ``targets()`` that need them."""


def endpoint_of(namespace: str, spec: dict[str, Any]) -> str | None:
    """A Handler's endpoint: spec.endpoint, or its Service's DNS name."""
    if spec.get("endpoint"):
        return str(spec["endpoint"])
    service = spec.get("service") or {}
    if service.get("name") and service.get("port"):
        return f"tcp://{service['name']}.{namespace}.svc:{service['port']}"
    return None


class ConfigDiscovery:
    """``handlers: [{name, endpoint}]`` from the conductor's config file, re-read when it changes."""

    def __init__(self, path: pathlib.Path | None, initial: list[dict[str, Any]] | None = None) -> None:
        self._path = path
        self._stamp: float | None = None
        self._targets = self._parse(initial or [])

    @staticmethod
    def _parse(entries: Any) -> dict[str, str]:
        targets = {}
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("name") and entry.get("endpoint"):
                targets[str(entry["name"])] = str(entry["endpoint"])
            else:
                log.warning("ignoring handler entry %r: it needs a name and an endpoint", entry)
        return targets

    async def targets(self) -> list[Target]:
        if self._path is not None:
            try:
                stamp = self._path.stat().st_mtime
                if stamp != self._stamp:
                    self._stamp = stamp
                    self._targets = self._parse((yaml.safe_load(self._path.read_text()) or {}).get("handlers"))
            except (OSError, yaml.YAMLError, AttributeError) as error:
                kept = text.count(len(self._targets), "handler")
                log.warning("cannot re-read %s (%s); keeping %s", self._path, error, kept)
        return [Target(name, endpoint) for name, endpoint in self._targets.items()]

    async def curves(self) -> dict[str, security.CurveClient]:
        return {}


class KubernetesDiscovery:
    """Handler resources in the given namespaces, or in all of them.

    CURVE Secrets are read once per ``secret_ttl`` seconds each, so a rotated
    key is in use within that time without reading every Secret every round.
    """

    def __init__(
        self,
        *,
        namespaces: tuple[str, ...],
        kubeconfig: str | None = None,
        secret_ttl: float = 300.0,
        identity: tuple[str, str] | None = None,
    ) -> None:
        self._namespaces = namespaces
        self._identity = identity
        self._identity_pair: tuple[bytes, bytes] | None = None
        self._kubeconfig = kubeconfig
        self._secret_ttl = secret_ttl
        self._api: Any = None
        self._core: Any = None
        self._discovery: Any = None
        self._targets: list[Target] = []
        self._curves: dict[str, security.CurveClient] = {}
        self._secrets: dict[tuple[str, str], tuple[float, security.CurveClient]] = {}

    async def _custom(self) -> Any:
        if self._api is None:
            from kubernetes_asyncio import client as k8s
            from kubernetes_asyncio import config as k8s_config

            configuration = k8s.Configuration()
            try:
                if self._kubeconfig is not None:
                    raise k8s_config.ConfigException("kubeconfig given")
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException:
                await k8s_config.load_kube_config(config_file=self._kubeconfig, client_configuration=configuration)
            api_client = k8s.ApiClient(configuration)
            self._api, self._core = k8s.CustomObjectsApi(api_client), k8s.CoreV1Api(api_client)
            self._discovery = k8s.DiscoveryV1Api(api_client)
        return self._api

    async def targets(self) -> list[Target]:
        try:
            api = await self._custom()
            if self._namespaces:
                items = []
                for namespace in self._namespaces:
                    listed = await api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                    items += listed["items"]
            else:
                items = (await api.list_cluster_custom_object(GROUP, VERSION, PLURAL))["items"]
        except Exception as error:  # API down: scrape what we knew
            log.warning("cannot list Handlers (%s); keeping %s", error, text.count(len(self._targets), "target"))
            return list(self._targets)
        pods = await self._pods(items)
        targets, curves = [], {}
        for item in items:
            meta, spec = item.get("metadata", {}), item.get("spec") or {}
            namespace = str(meta.get("namespace", ""))
            name = f"{namespace}/{meta.get('name')}"
            endpoint = endpoint_of(namespace, spec)
            if endpoint is None:
                continue
            service = spec.get("service") or {}
            replicas = None if spec.get("endpoint") else pods.get((namespace, str(service.get("name"))))
            if replicas is None:
                found = [Target(name, endpoint)]
            else:
                found = [
                    Target(name, pod.address, pod.pod)
                    for pod in replicas.endpoints(namespace, str(service["name"]), int(service["port"]))
                    if pod.serving
                ]
            targets += found
            secret_name = (spec.get("curve") or {}).get("secretName")
            curve = None
            if secret_name:
                curve = await self._curve(namespace, str(secret_name), handler=name)
            elif spec.get("security") != "plaintext" and self._identity is not None:
                curve = await self._issued(namespace, str(meta.get("name")), handler=name)
            if curve is not None:
                curves.update({target.endpoint: curve for target in found})
        self._targets, self._curves = targets, curves
        return list(targets)

    async def _pods(self, items: list[dict[str, Any]]) -> dict[tuple[str, str], endpoints.ServiceEndpoints]:
        """The EndpointSlices of the Services that Handlers name, one list per namespace.

        A namespace whose slices cannot be listed (no permission, API trouble)
        is scraped through the Services' own addresses instead.
        """
        wanted: defaultdict[str, set[str]] = defaultdict(set)
        for item in items:
            spec = item.get("spec") or {}
            if not spec.get("endpoint") and (spec.get("service") or {}).get("name"):
                wanted[str(item.get("metadata", {}).get("namespace", ""))].add(str(spec["service"]["name"]))
        found: dict[tuple[str, str], endpoints.ServiceEndpoints] = {}
        for namespace, services in wanted.items():
            selector = f"{endpoints.SERVICE_LABEL} in ({','.join(sorted(services))})"
            try:
                listed = await self._discovery.list_namespaced_endpoint_slice(namespace, label_selector=selector)
            except Exception as error:
                log.warning("cannot list EndpointSlices in %s (%s); scraping through the Services", namespace, error)
                continue
            slices = endpoints.ServiceEndpoints()
            for body in self._discovery.api_client.sanitize_for_serialization(listed).get("items", []):
                body.setdefault("metadata", {}).setdefault("namespace", namespace)
                slices.apply(body)
            for service in services:
                found[namespace, service] = slices
        return found

    async def curves(self) -> dict[str, security.CurveClient]:
        return dict(self._curves)

    async def _curve(self, namespace: str, secret_name: str, *, handler: str) -> security.CurveClient | None:
        """The keys of a Handler's Secret, or None (logged): it is then called without, and shows as down."""
        cached = self._secrets.get((namespace, secret_name))
        if cached is not None and time.monotonic() - cached[0] < self._secret_ttl:
            return cached[1]
        try:
            secret = await self._core.read_namespaced_secret(secret_name, namespace)
            curve = security.CurveClient.from_secret_data(secret.data, secret=f"{namespace}/{secret_name}")
        except Exception as error:  # missing, forbidden or malformed: this handler only
            log.warning(
                "Handler %s: cannot use the CURVE keys of Secret %s/%s (%s)", handler, namespace, secret_name, error
            )
            return None
        self._secrets[(namespace, secret_name)] = (time.monotonic(), curve)
        return curve

    async def _issued(self, namespace: str, handler_name: str, *, handler: str) -> security.CurveClient | None:
        """Our identity and the server key the operator issued for the Handler, or None (logged): it is then
        called in clear text, as before the operator issued it keys, and shows as down if it needs them."""
        assert self._identity is not None
        secret_name = f"{handler_name}-curve"
        cached = self._secrets.get((namespace, secret_name))
        if cached is not None and time.monotonic() - cached[0] < min(self._secret_ttl, ISSUED_TTL):
            return cached[1]
        try:
            if self._identity_pair is None:
                own = await self._core.read_namespaced_secret(self._identity[1], self._identity[0])
                public, secret = security.parse_certificate(
                    base64.b64decode((own.data or {}).get("client.key_secret", "")).decode(), "client.key_secret"
                )
                if secret is None:
                    raise ValueError(f"Secret {'/'.join(self._identity)} client.key_secret holds no secret-key")
                self._identity_pair = (public, secret)
            issued = await self._core.read_namespaced_secret(secret_name, namespace)
            server, _ = security.parse_certificate(
                base64.b64decode((issued.data or {}).get("server.key", "")).decode(), "server.key"
            )
        except Exception as error:  # not issued yet, forbidden or malformed: this handler only, tried next round
            log.warning("Handler %s: no issued CURVE keys to call it with (%s)", handler, error)
            return None
        public, secret = self._identity_pair
        curve = security.CurveClient(server_public_key=server, public_key=public, secret_key=secret)
        self._secrets[(namespace, secret_name)] = (time.monotonic(), curve)
        return curve

    async def close(self) -> None:
        if self._api is not None:
            await self._api.api_client.close()
