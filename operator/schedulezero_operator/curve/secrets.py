"""The Secrets that carry CURVE keys: their names and labels, reading and writing them by name, and parsing them.

Every Secret the operator writes carries ``LABEL`` and ``MANAGED_BY``; one of
the same name without them is never written (see ``issuer.py``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import logging
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from schedulezero_handler import security
from schedulezero_operator import budget as budget_
from schedulezero_operator.curve import rotation

log = logging.getLogger(__name__)

LABEL = "schedulezero.io/curve"
"""Its value says what the Secret holds: ``identity``, ``clients`` or ``server``."""
MANAGED_BY = ("app.kubernetes.io/managed-by", "schedulezero-operator")
CLIENTS_SECRET = "schedulezero-curve-clients"
OPERATOR_IDENTITY = "schedulezero-operator-curve"
CONDUCTOR_IDENTITY = "schedulezero-conductor-curve"
HANDLER_API_VERSION = "schedulezero.io/v1alpha1"


def server_secret_name(handler: str) -> str:
    """The Secret a Handler's issued pair lives in; the handler chart mounts it by this name."""
    return f"{handler}-curve"


@dataclasses.dataclass
class SecretRead:
    data: dict[str, str]
    labels: dict[str, str]
    version: str
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


class SecretStore:
    """Get, create and replace Secrets by name, each request paid for from the budget."""

    def __init__(self, core: Any, budget: budget_.Budget) -> None:
        self._core = core
        self._budget = budget

    async def read(self, namespace: str, name: str) -> SecretRead | None:
        await self._budget.acquire("secret")
        try:
            secret = await self._core.read_namespaced_secret(name, namespace, _request_timeout=30)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        decoded = {}
        for key, value in (secret.data or {}).items():
            try:
                decoded[key] = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded[key] = ""  # unreadable: parsing it fails, naming the key
        metadata = secret.metadata
        labels, annotations = dict(metadata.labels or {}), dict(metadata.annotations or {})
        return SecretRead(decoded, labels, str(metadata.resource_version or ""), annotations)

    async def write(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        *,
        kind: str,
        version: str | None = None,
        owner: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        """Creates the Secret, or (with ``version``) replaces the one at that resourceVersion; 409 raises."""
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL: kind, MANAGED_BY[0]: MANAGED_BY[1]},
        }
        if owner is not None:
            metadata["ownerReferences"] = [owner]
        if annotations:
            metadata["annotations"] = annotations
        if version is not None:
            metadata["resourceVersion"] = version
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": metadata,
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
        }
        await self._budget.acquire("secret")
        if version is None:
            await self._core.create_namespaced_secret(namespace, body, _request_timeout=30)
        else:
            await self._core.replace_namespaced_secret(name, namespace, body, _request_timeout=30)


def ours(read: SecretRead, kind: str) -> bool:
    return read.labels.get(LABEL) == kind and read.labels.get(MANAGED_BY[0]) == MANAGED_BY[1]


def read_pair(read: SecretRead | None, key: str, what: str) -> tuple[bytes, bytes]:
    """(public, secret) from a Secret's ``key``; ValueError naming what is wrong."""
    if read is None or key not in read.data:
        raise ValueError(f"{what} lacks {key}")
    public, secret = security.parse_certificate(read.data[key], f"{what} {key}")
    if secret is None:
        raise ValueError(f"{what} {key} holds no secret-key")
    if len(public) != 40 or len(secret) != 40:
        raise ValueError(f"{what} {key} holds keys that are not 40-character Z85")
    return public, secret


def read_keys(read: SecretRead | None, what: str) -> rotation.Keys:
    """The keys a Handler's Secret holds; ValueError naming what is wrong (a damaged next pair is dropped)."""
    server = read_pair(read, "server.key_secret", what)
    assert read is not None
    following = None
    if "next.key_secret" in read.data:
        try:
            following = read_pair(read, "next.key_secret", what)
        except ValueError as error:
            log.warning("%s: dropping the next pair (%s)", what, error)
    since = None
    with contextlib.suppress(ValueError):
        since = datetime.datetime.fromisoformat(read.annotations.get(rotation.SINCE_ANNOTATION, ""))
    return rotation.Keys(
        server=server, next=following, since=since, handled=read.annotations.get(rotation.REQUEST_ANNOTATION)
    )
