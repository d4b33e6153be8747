"""Which handlers the conductor scrapes: Handler resources in a cluster, or a list in its config.

Both are re-read every scrape round, so a handler that appears or disappears
is picked up without a restart, and a brief API outage only means scraping
the last known set once more. A Handler with ``spec.curve.secretName`` is
called with the CURVE keys of that Secret, as the operator calls it.
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any, Protocol

import yaml

from schedulezero_handler import security

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "schedulezero.io", "v1alpha1", "handlers"


class Discovery(Protocol):
    async def targets(self) -> dict[str, str]:
        """Handler name ("namespace/name" in a cluster) -> ZeroMQ endpoint."""

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

    async def targets(self) -> dict[str, str]:
        if self._path is not None:
            try:
                stamp = self._path.stat().st_mtime
                if stamp != self._stamp:
                    self._stamp = stamp
                    self._targets = self._parse((yaml.safe_load(self._path.read_text()) or {}).get("handlers"))
            except (OSError, yaml.YAMLError, AttributeError) as error:
                log.warning("cannot re-read %s (%s); keeping %d handlers", self._path, error, len(self._targets))
        return dict(self._targets)

    async def curves(self) -> dict[str, security.CurveClient]:
        return {}


class KubernetesDiscovery:
    """Handler resources in the given namespaces, or in all of them.

    CURVE Secrets are read once per ``secret_ttl`` seconds each, so a rotated
    key is in use within that time without reading every Secret every round.
    """

    def __init__(
        self, *, namespaces: tuple[str, ...], kubeconfig: str | None = None, secret_ttl: float = 300.0
    ) -> None:
        self._namespaces = namespaces
        self._kubeconfig = kubeconfig
        self._secret_ttl = secret_ttl
        self._api: Any = None
        self._core: Any = None
        self._targets: dict[str, str] = {}
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
        return self._api

    async def targets(self) -> dict[str, str]:
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
            log.warning("cannot list Handlers (%s); keeping %d", error, len(self._targets))
            return dict(self._targets)
        targets, curves = {}, {}
        for item in items:
            meta, spec = item.get("metadata", {}), item.get("spec") or {}
            name = f"{meta.get('namespace')}/{meta.get('name')}"
            endpoint = endpoint_of(meta.get("namespace", ""), spec)
            if endpoint is None:
                continue
            targets[name] = endpoint
            secret_name = (spec.get("curve") or {}).get("secretName")
            if secret_name:
                curve = await self._curve(str(meta.get("namespace")), str(secret_name), handler=name)
                if curve is not None:
                    curves[endpoint] = curve
        self._targets, self._curves = targets, curves
        return dict(targets)

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

    async def close(self) -> None:
        if self._api is not None:
            await self._api.api_client.close()
