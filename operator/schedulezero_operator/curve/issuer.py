"""CURVE keys the operator issues, so that a Handler's calls are encrypted and authenticated with no set-up.

A Handler with neither ``spec.security`` nor ``spec.curve`` gets keys issued
(unless the operator runs with ``--default-security plaintext``). Three kinds
of Secret carry them, each labelled ``schedulezero.io/curve`` and
``app.kubernetes.io/managed-by: schedulezero-operator``:

- two **identities** in the operator's own namespace: the client key pair the
  operator's replicas call with (one pair, shared) and the conductor's;
- in each namespace with issued Handlers, **the authorized clients**
  (``schedulezero-curve-clients``): ``operator.key`` and ``conductor.key``,
  the public halves, which handler pods mount as their authorized-keys
  directory. Other ``*.key`` entries are left alone, so an admin may add a
  client of their own (and revoke it by removing it);
- per Handler, **its server pair** (``NAME-curve``: ``server.key``,
  ``server.key_secret``), owned by the Handler, so it goes when the Handler does.

Secrets are only read by name, never listed, and only Secrets that carry the
label are written: one of the same name without it is reported and left alone.
A Secret of ours that is deleted or no longer parses is issued again, with the
pair last read when this replica knows it (so running handler pods keep
serving the key their clients use), else with a new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from kubernetes_asyncio.client.exceptions import ApiException

from schedulezero_handler import client as client_
from schedulezero_handler import errors, listeners, security
from schedulezero_operator.curve import rotation
from schedulezero_operator.curve.secrets import (
    CLIENTS_SECRET,
    CONDUCTOR_IDENTITY,
    HANDLER_API_VERSION,
    LABEL,
    OPERATOR_IDENTITY,
    SecretRead,
    SecretStore,
    ours,
    read_keys,
    read_pair,
    server_secret_name,
)

log = logging.getLogger(__name__)

Mode = Literal["curve", "plaintext"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Security:
    """How a Handler is called, and why: the ``Encrypted`` condition and the keys themselves."""

    curve: security.CurveClient | None
    encrypted: bool
    reason: str
    message: str
    rotation_port: bool = False
    """Call the pods at their port + 1, where they serve the next pair during a rotation (rotation.py)."""


Report = Callable[[str, str, bool, str, str], None]
"""(namespace, handler, warning, reason, message): an Event on the Handler."""


class KeyIssuer:
    """Issues and reads the keys of Handlers that do not opt out, and says how each is called."""

    def __init__(
        self,
        store: SecretStore,
        *,
        namespace: str,
        mode: Mode,
        report: Report,
        byo: Callable[[str, str], Awaitable[security.CurveClient]],
        endpoints: Callable[[str, str], list[str]],
        owns: Callable[[str, str], bool],
        overlap: float,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self.mode: Mode = mode
        self._report = report
        self._byo = byo
        self._endpoints = endpoints
        self._owns = owns
        self._overlap = datetime.timedelta(seconds=overlap)
        self._handlers: dict[str, tuple[str, dict[str, Any], str | None]] = {}
        """(uid, spec, rotation request) of each Handler, as its last event had them, for the re-reads."""
        self._identity: tuple[bytes, bytes] | None = None
        self._conductor: bytes | None = None
        self._pairs: dict[tuple[str, str], rotation.Keys] = {}
        """The last keys read or written per Handler: what its pods serve, so a lost Secret gets them again."""
        self._served: dict[tuple[str, str], tuple[tuple[rotation.Phase, rotation.Pair | None], datetime.datetime]] = {}
        """Since when the pods have served what their rotation's phase asks, checked at each read."""
        self.state: dict[str, Security] = {}
        """How each Handler is called, by namespace/name."""
        self._rechecks: asyncio.Task[None] | None = None
        self._interval = 0.0
        self._authorized: dict[str, float] = {}
        """When each namespace's authorized-clients Secret was last seen right (monotonic): read once an interval."""

    async def start(self, *, on_change: Callable[[str, str, Security], Awaitable[None]], interval: float) -> None:
        """Reads or issues the operator's and the conductor's identities (a failure is retried on next use), and
        from then on re-reads every ``interval`` seconds the Secrets of every Handler resolved, telling
        ``on_change`` when one is to be called otherwise."""
        self._interval = interval
        self._rechecks = asyncio.get_running_loop().create_task(self._recheck(on_change, interval))
        if self.mode == "curve":
            try:
                await self._identities()
            except (ApiException, ValueError) as error:
                log.warning("CURVE identities in %s not ready: %s", self._namespace, _why(error))

    async def _identities(self) -> None:
        if self._identity is not None and self._conductor is not None:
            return
        self._identity = await self._identity_pair(OPERATOR_IDENTITY)
        self._conductor = (await self._identity_pair(CONDUCTOR_IDENTITY))[0]

    async def _identity_pair(self, name: str) -> tuple[bytes, bytes]:
        what = f"Secret {self._namespace}/{name}"
        for _ in range(3):  # another replica may write it between our read and our write
            read = await self._store.read(self._namespace, name)
            if read is not None and not ours(read, "identity"):
                raise ValueError(f"{what} exists without the label {LABEL}=identity; not using or replacing it")
            try:
                return read_pair(read, "client.key_secret", what)
            except ValueError as error:
                if read is not None:
                    log.warning("%s unusable (%s): issuing a new identity", what, error)
            public, secret = security.new_pair()
            data = {
                "client.key": security.certificate_text(public),
                "client.key_secret": security.certificate_text(public, secret),
            }
            try:
                await self._store.write(
                    self._namespace, name, data, kind="identity", version=read.version if read else None
                )
            except ApiException as error:
                if error.status in (409,):
                    continue
                raise
            log.info("issued the CURVE identity %s", what)
            return public, secret
        raise ValueError(f"{what} kept changing while it was issued")

    def forget(self, namespace: str, name: str) -> None:
        self.state.pop(f"{namespace}/{name}", None)
        self._handlers.pop(f"{namespace}/{name}", None)
        self._served.pop((namespace, name), None)
        self._pairs.pop((namespace, name), None)

    def unchanged(self, namespace: str, name: str, spec: dict[str, Any], request: str | None) -> Security | None:
        """How the Handler is called, if its spec and rotation request are as last resolved: a Handler event that
        changed neither (its status written, a label) reads no Secret; the re-reads keep the keys current."""
        qualified = f"{namespace}/{name}"
        known = self._handlers.get(qualified)
        if known is None or known[1] != spec or known[2] != request:
            return None
        state = self.state.get(qualified)
        return None if state is not None and state.reason == "KeysUnavailable" else state

    async def resolve(
        self, namespace: str, name: str, uid: str, spec: dict[str, Any], *, request: str | None = None
    ) -> Security:
        """How the Handler is called now, issuing, repairing or rotating its keys as needed (``request``: its
        rotate-keys annotation); reports changes as Events."""
        self._handlers[f"{namespace}/{name}"] = (uid, spec, request)
        return await self._settle(namespace, name, uid, spec)

    async def _settle(self, namespace: str, name: str, uid: str, spec: dict[str, Any]) -> Security:
        qualified = f"{namespace}/{name}"
        before = self.state.get(qualified)
        try:
            now = await self._resolve(namespace, name, uid, spec)
        except Exception as error:  # the API failing: keep what worked, say why once
            if before is not None and before.encrypted:
                log.warning("Handler %s: keys not re-read (%s); keeping them", qualified, _why(error))
                return before
            now = Security(
                curve=None, encrypted=False, reason="KeysUnavailable", message=f"CURVE keys unavailable: {_why(error)}"
            )
        if qualified not in self._handlers:  # deleted meanwhile: nothing to keep or report
            return now
        self.state[qualified] = now
        changed = before is None or before.reason != now.reason
        if changed and not now.encrypted and now.reason != "PlaintextByDefault":
            self._report(namespace, name, True, _EVENT_REASONS.get(now.reason, now.reason), now.message)
        return now

    async def _resolve(self, namespace: str, name: str, uid: str, spec: dict[str, Any]) -> Security:
        secret_name = (spec.get("curve") or {}).get("secretName")
        if spec.get("security") == "plaintext":
            message = (
                "spec.security is plaintext: calls travel in clear text and any pod that reaches it may call any method"
            )
            return Security(curve=None, encrypted=False, reason="Plaintext", message=message)
        if secret_name:
            try:
                curve = await self._byo(namespace, str(secret_name))
            except (ApiException, ValueError) as error:
                message = f"CURVE keys from Secret {secret_name!r} unusable: {_why(error)}"
                return Security(curve=None, encrypted=False, reason="InvalidCurveSecret", message=message)
            return Security(
                curve=curve, encrypted=True, reason="SecretProvided", message=f"keys from Secret {secret_name}"
            )
        if self.mode == "plaintext":
            message = "no spec.security or spec.curve, and this operator issues no keys (--default-security plaintext)"
            return Security(curve=None, encrypted=False, reason="PlaintextByDefault", message=message)
        try:
            await self._identities()
            await self._authorize(namespace)
        except ValueError as error:
            return Security(
                curve=None, encrypted=False, reason="KeysUnavailable", message=f"CURVE keys unavailable: {error}"
            )
        for _ in range(3):
            try:
                return await self._server(namespace, name, uid)
            except ApiException as error:
                if error.status != 409:
                    raise
                # Another replica created or changed the Secret between our read and our write: read it again.
        return await self._server(namespace, name, uid)

    async def _authorize(self, namespace: str) -> None:
        """The namespace's authorized-clients Secret lists the operator's and conductor's public keys."""
        assert self._identity is not None
        assert self._conductor is not None
        wanted = {
            "operator.key": security.certificate_text(self._identity[0]),
            "conductor.key": security.certificate_text(self._conductor),
        }
        checked = self._authorized.get(namespace)
        if checked is not None and time.monotonic() - checked < self._interval:
            return  # read for another Handler of the namespace a moment ago
        read = await self._store.read(namespace, CLIENTS_SECRET)
        if read is not None and not ours(read, "clients"):
            raise ValueError(f"Secret {namespace}/{CLIENTS_SECRET} exists without the label {LABEL}=clients")
        if read is not None and all(read.data.get(key) == value for key, value in wanted.items()):
            self._authorized[namespace] = time.monotonic()
            return
        data = {**(read.data if read is not None else {}), **wanted}
        try:
            await self._store.write(
                namespace, CLIENTS_SECRET, data, kind="clients", version=read.version if read else None
            )
        except ApiException as error:
            if error.status != 409:  # another replica wrote it: read again next time
                raise
            return
        self._authorized[namespace] = time.monotonic()

    async def _server(self, namespace: str, name: str, uid: str) -> Security:
        assert self._identity is not None
        secret_name = server_secret_name(name)
        what = f"Secret {namespace}/{secret_name}"
        read = await self._store.read(namespace, secret_name)
        if read is not None and not ours(read, "server"):
            message = (
                f"{what} exists without the label {LABEL}=server: not using or replacing it; "
                "rename it, or name it in spec.curve.secretName"
            )
            return Security(curve=None, encrypted=False, reason="SecretConflict", message=message)
        try:
            keys = read_keys(read, what)
        except ValueError as error:
            keys = await self._reissue(namespace, name, uid, read, what, error)
            read = None
        self._pairs[(namespace, name)] = keys
        phase = keys.phase
        next_served = phase is rotation.Phase.OVERLAP and await self._serves(namespace, name, keys.next, True)
        main_served = phase is rotation.Phase.PROMOTED and await self._serves(namespace, name, keys.server, False)
        pair, rotation_port = rotation.call_with(keys, next_served=next_served, main_served=main_served)
        served = next_served or main_served
        started = self._served.get((namespace, name))
        if not served or started is None or started[0] != (phase, keys.next):
            started = (phase, keys.next), datetime.datetime.now(datetime.UTC)
            self._served[(namespace, name)] = started
        served_for = datetime.datetime.now(datetime.UTC) - started[1] if served else None
        if read is not None and self._owns(namespace, name):
            await self._rotate(namespace, name, uid, keys, version=read.version, served_for=served_for)
        curve = security.CurveClient(
            server_public_key=pair[0], public_key=self._identity[0], secret_key=self._identity[1]
        )
        message = f"keys issued in {what}" + (f" ({phase.value} in a key rotation)" if keys.next else "")
        return Security(curve=curve, encrypted=True, reason="KeysIssued", message=message, rotation_port=rotation_port)

    async def _serves(self, namespace: str, name: str, pair: rotation.Pair | None, rotation_port: bool) -> bool:
        """Whether every pod of the Handler answers with ``pair`` (at port + 1 with ``rotation_port``)."""
        assert self._identity is not None
        endpoints = self._endpoints(namespace, name)
        if pair is None or not endpoints:
            return False
        curve = security.CurveClient(
            server_public_key=pair[0], public_key=self._identity[0], secret_key=self._identity[1]
        )
        async with client_.Client(client_.ClientSettings(curve=curve)) as checker:
            for endpoint in endpoints:
                try:
                    at = listeners.rotation_endpoint(endpoint) if rotation_port else endpoint
                    await checker.call(at, "sys.health", timeout=3.0)
                except (errors.CallError, ValueError):
                    return False
        return True

    async def _rotate(
        self,
        namespace: str,
        name: str,
        uid: str,
        keys: rotation.Keys,
        *,
        version: str,
        served_for: datetime.timedelta | None,
    ) -> None:
        """Takes the rotation's next step, if one is due, by writing the Handler's Secret."""
        _, spec, request = self._handlers.get(f"{namespace}/{name}", ("", {}, None))
        interval = None
        if spec.get("rotationInterval"):
            try:
                interval = rotation.parse_interval(str(spec["rotationInterval"]))
            except ValueError as error:
                self._report(namespace, name, True, "InvalidRotationInterval", str(error))
        now = datetime.datetime.now(datetime.UTC)
        step = rotation.step(
            keys, now=now, request=request, interval=interval, overlap=self._overlap,
            served_for=served_for,
        )  # fmt: skip
        if step is rotation.Step.NONE:
            return
        if step is rotation.Step.BEGIN:
            after = dataclasses.replace(keys, next=security.new_pair(), since=now, handled=request or keys.handled)
            reason, message = "CurveKeysRotating", "rotating the CURVE key pair: pods serve the next one on port + 1"
        elif step is rotation.Step.PROMOTE:
            after = dataclasses.replace(keys, server=keys.next or keys.server, since=now)
            reason, message = "CurveKeysRotating", "every pod serves the next CURVE key pair: it is now the current one"
        else:
            after = dataclasses.replace(keys, next=None, since=now)
            reason, message = "CurveKeysRotated", "CURVE key rotation done: the previous key pair is no longer served"
        try:
            await self._write_keys(namespace, name, uid, after, version=version)
        except ApiException as error:
            if error.status != 409:
                raise
            return  # changed meanwhile: judged again at the next read
        self._pairs[(namespace, name)] = after
        self._report(namespace, name, False, reason, message)

    async def _write_keys(
        self, namespace: str, name: str, uid: str, keys: rotation.Keys, *, version: str | None
    ) -> None:
        data = {
            "server.key": security.certificate_text(keys.server[0]),
            "server.key_secret": security.certificate_text(*keys.server),
        }
        if keys.next is not None:
            data["next.key"] = security.certificate_text(keys.next[0])
            data["next.key_secret"] = security.certificate_text(*keys.next)
        annotations = {rotation.SINCE_ANNOTATION: (keys.since or datetime.datetime.now(datetime.UTC)).isoformat()}
        if keys.handled:
            annotations[rotation.REQUEST_ANNOTATION] = keys.handled
        owner = {"apiVersion": HANDLER_API_VERSION, "kind": "Handler", "name": name, "uid": uid}
        await self._store.write(
            namespace, server_secret_name(name), data, kind="server", version=version, owner=owner,
            annotations=annotations,
        )  # fmt: skip

    async def _reissue(
        self, namespace: str, name: str, uid: str, read: SecretRead | None, what: str, error: ValueError
    ) -> rotation.Keys:
        known = self._pairs.get((namespace, name))
        now = datetime.datetime.now(datetime.UTC)
        keys = known if known is not None else rotation.Keys(server=security.new_pair(), since=now)
        await self._write_keys(namespace, name, uid, keys, version=read.version if read else None)
        if read is None and known is None:
            self._report(namespace, name, False, "CurveKeysIssued", f"issued a CURVE key pair in {what}")
        else:
            same = (
                "the keys its pods serve" if known is not None else "a new key pair (its pods must restart to serve it)"
            )
            why = "was deleted" if read is None else f"was unusable ({error})"
            self._report(namespace, name, True, "CurveSecretReissued", f"{what} {why}: issued it again with {same}")
        return keys

    def stop(self) -> None:
        if self._rechecks is not None:
            self._rechecks.cancel()

    async def _recheck(self, on_change: Callable[[str, str, Security], Awaitable[None]], interval: float) -> None:
        """Each Handler's Secrets again, every ``interval`` seconds: a deleted or damaged one is issued again, and
        a rotation moves on."""
        while True:
            await asyncio.sleep(interval)
            for qualified, (uid, spec, _) in list(self._handlers.items()):
                if qualified not in self._handlers:  # deleted during this round
                    continue
                namespace, _, name = qualified.partition("/")
                before = self.state.get(qualified)
                now = await self._settle(namespace, name, uid, spec)
                if now != before and qualified in self._handlers:
                    await on_change(namespace, name, now)


_EVENT_REASONS = {
    "Plaintext": "PlaintextHandler",
    "SecretConflict": "CurveSecretConflict",
    "KeysUnavailable": "CurveKeysUnavailable",
}


def condition(
    current: Security | None, previous: Iterable[dict[str, Any]], *, now: datetime.datetime
) -> dict[str, Any] | None:
    """The Handler's ``Encrypted`` condition, its transition time kept while its status holds."""
    if current is None:
        return None
    status = "True" if current.encrypted else "False"
    before = next((c for c in previous if c.get("type") == "Encrypted"), None)
    since = (
        before["lastTransitionTime"]
        if before and before.get("status") == status
        else now.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return {
        "type": "Encrypted",
        "status": status,
        "reason": current.reason,
        "message": current.message,
        "lastTransitionTime": since,
    }


def _why(error: BaseException) -> str:
    return str(getattr(error, "reason", None) or error)
