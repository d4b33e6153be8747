"""The operator's writes to the Kubernetes API: status, Events and the run-now annotation.

kopf watches; these are the few calls made outside its handlers, through
kubernetes_asyncio, authenticated the same way kopf is (kubeconfig or the pod's
service account). Status goes through the status subresource as a JSON merge
patch, so fields the engine sets to null disappear and spec is never touched.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import time
import uuid
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from schedulezero_handler import security
from schedulezero_operator import budget as budget_
from schedulezero_operator.sinks import ScheduleKey, WriteConflict

log = logging.getLogger(__name__)

GROUP = "schedulezero.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
RUN_NOW_ANNOTATION = "schedulezero.io/run-now"
BACKFILL_ANNOTATION = "schedulezero.io/backfill"
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "schedulezero-operator"
REQUEST_TIMEOUT = 30.0
"""Seconds per write: one stalled by a lost connection is retried rather than waited on for minutes."""


async def connect(kubeconfig: str | None = None) -> k8s.ApiClient:
    """An API client from the pod's service account, else from the kubeconfig (``KUBECONFIG``)."""
    configuration = k8s.Configuration()
    try:
        if kubeconfig is not None:
            raise k8s_config.ConfigException("kubeconfig given")
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return k8s.ApiClient(configuration)


def default_namespace(kubeconfig: str | None = None) -> str:
    """The namespace of the kubeconfig's current context, else "default"."""
    try:
        _, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except (k8s_config.ConfigException, OSError):
        return "default"
    return str(((active or {}).get("context") or {}).get("namespace") or "default")


class Api:
    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client = api_client
        # Typed as Any: its stubs omit the _content_type option that custom resources need (merge patch).
        self.custom: Any = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)

    async def close(self) -> None:
        await self.api_client.close()

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], *, version: str | None = None
    ) -> str | None:
        """Merge-patches an object's status; returns the object's new resourceVersion (None if it is gone).

        With ``version``, the patch applies only to the object at that
        resourceVersion: changed since, the API server refuses it (409), and
        ``sinks.WriteConflict`` is raised.
        """
        body: dict[str, Any] = {"status": status}
        if version is not None:
            body["metadata"] = {"resourceVersion": version}
        try:
            written = await self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH,
                _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except ApiException as error:
            if error.status == 409:
                raise WriteConflict(f"{plural} {namespace}/{name} changed since resourceVersion {version}") from None
            if error.status != 404:
                raise
            return None
        return str((written.get("metadata") or {}).get("resourceVersion") or "") or None

    async def request_run(self, namespace: str, name: str, token: str | None = None) -> str:
        """Sets the run-now annotation to a new token; the operator runs the Schedule once for it."""
        token = token or f"{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        patch = {"metadata": {"annotations": {RUN_NOW_ANNOTATION: token}}}
        await self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "schedules", name, patch, _content_type=MERGE_PATCH
        )
        return token

    async def schedule_keys(self, namespaces: tuple[str, ...], *, page: int = 500) -> set[ScheduleKey]:
        """Every Schedule in ``namespaces`` (all of them when empty), listed in pages of ``page``."""
        keys: set[ScheduleKey] = set()
        for namespace in namespaces or (None,):
            token = None
            while True:
                options: dict[str, Any] = {"limit": page, "_request_timeout": REQUEST_TIMEOUT}
                if token:
                    options["_continue"] = token
                if namespace is None:
                    listed = await self.custom.list_cluster_custom_object(GROUP, VERSION, "schedules", **options)
                else:
                    listed = await self.custom.list_namespaced_custom_object(
                        GROUP, VERSION, namespace, "schedules", **options
                    )
                keys.update(ScheduleKey(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"])
                token = listed["metadata"].get("continue")
                if not token:
                    break
        return keys

    async def curve_keys(self, namespace: str, secret_name: str) -> security.CurveClient:
        """The CURVE keys a Handler's Secret holds: the handler's server.key and our client.key_secret."""
        secret = await self.core.read_namespaced_secret(secret_name, namespace)
        return security.CurveClient.from_secret_data(secret.data, secret=f"{namespace}/{secret_name}")

    async def create_event(self, event: k8s.CoreV1Event) -> None:
        await self.core.create_namespaced_event(event.metadata.namespace, event)


class ElectionStore:
    """What the Lease and checkpoint stores share: where their objects live, and a short request timeout.

    The timeout keeps a request stalled by a partition from holding up the
    election rounds after it heals. Given a ``budget`` (the checkpoints are),
    a store's requests take its tokens first, before status writes.
    """

    api_class: Any
    """The kubernetes_asyncio API class of their objects."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        namespace: str,
        prefix: str,
        timeout: float = 5.0,
        budget: budget_.Budget | None = None,
    ) -> None:
        self._api = self.api_class(api_client)
        self.namespace = namespace
        self._prefix = prefix
        self._timeout = timeout
        self._budget = budget

    async def _take(self, kind: str) -> None:
        if self._budget is not None:
            await self._budget.acquire(kind, priority=budget_.Priority.ELECTION)


class ScheduleStatusSink:
    """The engine's StatusSink: each write is one status-subresource patch.

    Each patch carries, as its precondition, the Schedule's resourceVersion as
    this replica last saw it (its watch, its own last write): a replica that
    lost the Schedule's shard while its write was under way (paused, cut off
    from the API server) cannot overwrite what the new owner wrote since. A
    write refused so is retried with the version the watch brings, and no
    longer rendered at all once the shard is gone.

    It adds ``lastRunDuration``, the latest run's ``durationSeconds`` as people
    read a duration, for the LAST DURATION column of ``kubectl get sched -o
    wide``: a printer column can only show a number as it is (``0.012899``).
    """

    def __init__(self, api: Api) -> None:
        self._api = api
        self._versions: dict[ScheduleKey, str] = {}

    def seen(self, key: ScheduleKey, version: str | None) -> None:
        """The Schedule's resourceVersion in a watch event; None: it is gone."""
        if version is None:
            self._versions.pop(key, None)
        else:
            self._versions[key] = version

    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        latest = (status.get("runs") or [{}])[0]
        seconds = latest.get("durationSeconds") if isinstance(latest, dict) else None
        shown = human_duration(seconds) if isinstance(seconds, (int, float)) else None  # None: removed
        written = await self._api.patch_status(
            "schedules", key.namespace, key.name, {**status, "lastRunDuration": shown}, version=self._versions.get(key)
        )
        if written is not None:
            self._versions[key] = written


def human_duration(seconds: float) -> str:
    """``0.4ms``, ``13ms``, ``1.23s``, ``12.3s``, ``2m5s``, ``1h2m``: as precise as is worth reading."""
    milliseconds = seconds * 1000
    if milliseconds < 9.95:
        return f"{milliseconds:.1f}ms"
    if milliseconds < 999.5:
        return f"{milliseconds:.0f}ms"
    if seconds < 9.995:
        return f"{seconds:.2f}s"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60}s"
    return f"{whole // 3600}h{whole % 3600 // 60}m"


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str
    uid: str
    api_version: str = API_VERSION
    """The object's group and version: a Schedule's or a Handler's, but for the election's own Leases."""


class EventRecorder:
    """Posts Kubernetes Events, at most one per object and reason per ``interval``.

    A Schedule firing every second and failing every time would otherwise
    write an Event per run; instead the next Event after a quiet interval says
    how many were held back. Posting happens in a background task, so callers
    never wait on the API; each Event takes a token from the ``budget``.
    """

    def __init__(
        self, api: Api, *, interval: float = 60.0, instance: str = "", budget: budget_.Budget | None = None
    ) -> None:
        self._api = api
        self._budget = budget
        self._interval = interval
        self._instance = instance
        self._last: dict[tuple[str, str, str, str], float] = {}
        self._held: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self._queue: asyncio.Queue[k8s.CoreV1Event] = asyncio.Queue(maxsize=1000)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._post())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def record(self, ref: ObjectRef, *, warning: bool, reason: str, message: str) -> None:
        key = (ref.kind, ref.namespace, ref.name, reason)
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            self._held[key] += 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            message = f"{message} ({held} more like this in the last {self._interval:.0f} s)"
        moment = datetime.datetime.now(datetime.UTC)
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(generate_name=f"{ref.name}.", namespace=ref.namespace),
            involved_object=k8s.V1ObjectReference(
                api_version=ref.api_version, kind=ref.kind, name=ref.name, namespace=ref.namespace, uid=ref.uid
            ),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            source=k8s.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=self._instance or COMPONENT,
            first_timestamp=moment,
            last_timestamp=moment,
            count=1 + held,
        )
        with contextlib.suppress(asyncio.QueueFull):  # under an Event storm, drop rather than grow
            self._queue.put_nowait(event)

    async def _post(self) -> None:
        while True:
            event = await self._queue.get()
            if self._budget is not None:
                await self._budget.acquire("event")
            try:
                await self._api.create_event(event)
            except Exception as error:
                log.info("event %s for %s not posted: %s", event.reason, event.involved_object.name, error)
