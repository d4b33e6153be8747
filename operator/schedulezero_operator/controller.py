"""The kopf operator: Schedules and Handlers from the Kubernetes API into the engine.

Watch events feed the engine: the Handlers' and EndpointSlices' through kopf
(``kopf.on.event``), the Schedules' through a watch of the operator's own
(``schedule_watch``), since every replica receives every Schedule's every
status write and kopf's per-event machinery cost more than the engine's work
on it. The engine is idempotent: the initial listing after a start restores
every Schedule from its status and catches up, a status write of our own
comes back as an event that changes nothing, and a deletion stops future
runs. No handler needs a finalizer or kopf's progress annotations, so
deleting a Schedule never waits for the operator, and the operator writes
nothing but status and Events on Schedules and Handlers (and, for the
election, its own Leases and checkpoint ConfigMaps in its namespace).

Several replicas share the work by shard (``election``): each watches
everything and keeps every Schedule's trigger warm, and acts (fires, writes
status, probes, posts Events) only for the shards whose Leases it holds.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import kopf

from schedulezero_handler import client as client_
from schedulezero_handler import endpoints, listeners, security, text
from schedulezero_operator import budget as budget_
from schedulezero_operator import (
    checkpoints,
    election,
    election_thread,
    joining,
    kubeapi,
    leases,
    probe,
    replicas,
    schedule_watch,
    status,
)
from schedulezero_operator import engine as engine_
from schedulezero_operator.curve import issuer as keys
from schedulezero_operator.curve import rotation
from schedulezero_operator.curve.secrets import SecretStore
from schedulezero_operator.metrics import HaMetrics, OperatorMetrics
from schedulezero_operator.sinks import ScheduleKey

log = logging.getLogger(__name__)

GROUP, VERSION = kubeapi.GROUP, kubeapi.VERSION

CLOCK_SKEW = 1.0
"""Seconds the clocks of two operator nodes may disagree by, when a new owner judges which caught-up times its
predecessor may already have sent (and so marks as re-sends)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ControllerSettings:
    """What ``schedulezero operator`` is told on its command line."""

    status_interval: float = 2.0
    """At most one status write per Schedule per this many seconds."""
    probe_interval: float = 30.0
    """Seconds between probes of each Handler."""
    event_interval: float = 60.0
    """At most one Event per object and reason per this many seconds."""
    metrics_port: int | None = 9464
    """Port of ``/metrics``; None serves none."""
    per_schedule_histograms: bool = False
    """A run-duration histogram per Schedule as well as per handler and method: 17 more series per Schedule."""
    watch_timeout: int = 300
    """Seconds a watch request lasts before it is renewed (server side); the client gives up a bit later."""
    ha: election.ElectionSettings = dataclasses.field(default_factory=election.ElectionSettings)
    """Shards and Lease timing."""
    identity: str = "schedulezero-operator"
    """This replica's name in the Leases: the pod name and a random suffix."""
    lease_namespace: str = "schedulezero-system"
    """Where the Leases and checkpoints live: the operator's own namespace."""
    budget: budget_.BudgetSettings = dataclasses.field(default_factory=budget_.BudgetSettings)
    """The rate of every request but the watches and the Leases: status, Events and checkpoints."""
    namespaces: tuple[str, ...] = ()
    """The namespaces watched; empty is every namespace."""
    joining: joining.JoinSettings = dataclasses.field(default_factory=joining.JoinSettings)
    """When this replica enters the election: once it has seen every Schedule (joining.py)."""
    default_security: keys.Mode = "plaintext"
    """How a Handler with neither spec.security nor spec.curve is called: with keys the operator issues, or not."""
    key_check_interval: float = 30.0
    """Seconds between re-reads of each Handler's key Secrets, so a deleted or damaged one is issued again."""


@dataclasses.dataclass
class Runtime:
    """What the handlers share, kept in kopf's memo."""

    api: kubeapi.Api
    budget: budget_.Budget
    client: client_.Client
    engine: engine_.Engine
    events: kubeapi.EventRecorder
    prober: probe.Prober
    elector: election.Elector
    election: election_thread.ElectionThread
    checkpointer: checkpoints.Checkpointer
    ha_metrics: HaMetrics
    status_sink: kubeapi.ScheduleStatusSink
    """Schedule status writes, each against the resourceVersion last seen for its Schedule."""
    uids: dict[tuple[str, str, str], str]
    """(kind, namespace, name) -> uid, for Events about objects."""
    listing: joining.Listing
    """The Schedules listed at start: the election waits until the watch has delivered them all."""
    issuer: keys.KeyIssuer
    """How each Handler is called (CURVE or not) and the keys the operator issues for it."""
    joined: asyncio.Task[None] | None = None
    """Lists the Schedules, waits for them, then enters the election."""
    in_election: bool = False
    """Set once ``joined`` has entered the election: the replica is ready (``/readyz``)."""
    stopping: bool = False
    """Set when the operator starts stopping: no longer ready."""
    watch: schedule_watch.ScheduleWatch | None = None
    """The Schedules' list and watch, feeding ``_schedule_event``; started once the engine runs."""
    handlers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Last Handler status written, by namespace/name."""
    specs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Each Handler's spec, by namespace/name."""
    methods: dict[str, frozenset[str] | None] = dataclasses.field(default_factory=dict)
    """The methods each Handler's replicas were last seen to expose, by namespace/name."""
    curves: dict[str, security.CurveClient | None] = dataclasses.field(default_factory=dict)
    """Each Handler's CURVE keys, read from its Secret on the Handler's events (not on its pods' changes)."""
    probed: dict[str, replicas.Summary] = dataclasses.field(default_factory=dict)
    """Each Handler's last probe, by namespace/name: reachable, and its methods' declared parameters."""
    serving: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """The endpoints each Handler is reached at now (its serving pods, or its one address), by namespace/name."""
    slices: endpoints.ServiceEndpoints = dataclasses.field(default_factory=endpoints.ServiceEndpoints)
    """Every EndpointSlice of a Service, for Handlers with spec.service: their pods."""
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    taken: dict[int, int] = dataclasses.field(default_factory=dict)
    """Shards taken over (checkpoint read, Schedules caught up), with the acquisition each was taken on: a
    shard acquired again is acted for only once caught up again."""

    def owns_shard(self, shard: int) -> bool:
        elector = self.elector
        return self.taken.get(shard, -1) == elector.generation.get(shard) and elector.owns_shard(shard)

    def owns(self, namespace: str, name: str) -> bool:
        return self.owns_shard(election.shard_of(namespace, name, self.elector.settings.shards))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


@dataclasses.dataclass
class _EngineEvents:
    """The engine's EventSink, turned into Kubernetes Events on Schedules."""

    uids: dict[tuple[str, str, str], str]
    recorder: kubeapi.EventRecorder

    def event(self, key: ScheduleKey, *, warning: bool, reason: str, message: str) -> None:
        uid = self.uids.get(("Schedule", key.namespace, key.name), "")
        ref = kubeapi.ObjectRef("Schedule", key.namespace, key.name, uid)
        self.recorder.record(ref, warning=warning, reason=reason, message=message)


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base for on.create/on.update handlers, which the operator has none of: nothing to build,
    keep or compare per watch event."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def build_registry(config: ControllerSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The same credentials as our own API client: the pod's service account, else the kubeconfig."""
        return await kopf.login_via_async_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Replicas coordinate through their own sharded Leases (election.py), not kopf's
        # peering: none at all, rather than kopf's default when the peering resource exists.
        settings.peering.standalone = True
        settings.peering.mandatory = False
        # Watches are renewed deliberately, so a silently dropped connection
        # (an API server restart behind a load balancer) cannot stall us. These are for the Handlers and
        # EndpointSlices; the Schedules' own watch (schedule_watch.py) renews itself the same way.
        settings.watching.server_timeout = config.watch_timeout
        settings.watching.client_timeout = config.watch_timeout + 30
        settings.watching.connect_timeout = 10
        settings.watching.reconnect_backoff = 1.0
        settings.networking.request_timeout = 60
        # The namespaces are named exactly (or all), and the CRDs are installed
        # before the operator: no need to watch namespaces or CRDs, nor the
        # cluster-wide permissions that would take.
        settings.scanning.disabled = True
        # Every handler here is kopf.on.event: kopf's change detection (the essence of each object, built
        # and compared on every event) serves no handler, and was a fifth of an event's cost.
        settings.persistence.diffbase_storage = _NoDiffBase()
        settings.posting.level = logging.WARNING
        # A line per watch event ("Handler 'schedules' succeeded") is noise at hundreds of events a second.
        if not logging.getLogger("kopf").isEnabledFor(logging.DEBUG):
            logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        memo.runtime = await _start(config)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime = memo.runtime
        runtime.stopping = True
        # No Schedule event from here on: what the engine stops with is what it hands over.
        if runtime.watch is not None:
            await runtime.watch.stop()
        # A graceful handover: stop firing and let runs finish, then release the Leases (renewed until then),
        # each right after its shard's final checkpoint, so that others take over at once rather than at expiry.
        # Statuses not written yet are not written here: their run records go to the next owners in the
        # final checkpoints, so the Leases are released at once (but for the records there is no room for).
        await runtime.prober.stop()
        runtime.issuer.stop()
        await runtime.engine.stop(flush=False)
        await runtime.engine.write_statuses(runtime.checkpointer.render_finals(runtime.owns_shard))
        await runtime.checkpointer.stop()
        if runtime.joined is not None and not runtime.joined.done():  # stopped before it joined: nothing to give up
            runtime.joined.cancel()
            await asyncio.gather(runtime.joined, return_exceptions=True)
        await runtime.election.stop()
        await runtime.events.stop()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)
        await runtime.client.close()
        await runtime.api.close()

    @kopf.on.event(GROUP, VERSION, "handlers", id="handlers", registry=registry)
    async def handler_event(
        event: kopf.RawEvent, body: kopf.Body, memo: Any, namespace: str | None, name: str, **_: Any
    ) -> None:
        assert namespace is not None  # both resources are namespaced
        runtime: Runtime = memo.runtime
        qualified = f"{namespace}/{name}"
        if event["type"] == "DELETED":
            runtime.engine.set_handler(namespace, name, None)
            runtime.prober.forget(qualified)
            for gone in (runtime.handlers, runtime.specs, runtime.methods, runtime.serving, runtime.probed,
                         runtime.curves):  # fmt: skip
                gone.pop(qualified, None)
            runtime.issuer.forget(namespace, name)
            return
        runtime.uids["Handler", namespace, name] = body["metadata"]["uid"]
        spec = copy.deepcopy(dict(body.get("spec") or {}))
        if spec != runtime.specs.get(qualified):
            known = body.get("status") or {}
            methods = known.get("methods") if known.get("endpoint") == resolve_endpoint(namespace, spec) else None
            runtime.methods[qualified] = frozenset(m["name"] for m in methods) if isinstance(methods, list) else None
            runtime.specs[qualified] = spec
        request = (body["metadata"].get("annotations") or {}).get(rotation.ROTATE_ANNOTATION)
        runtime.curves[qualified] = await _curve(runtime, namespace, name, spec, request=request)
        await _publish(runtime, namespace, name)

    @kopf.on.event(
        "discovery.k8s.io", "v1", "endpointslices", id="endpointslices", registry=registry,
        labels={endpoints.SERVICE_LABEL: kopf.PRESENT},
    )  # fmt: skip
    async def endpointslice_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
        """A Service's pods changed: the Handlers in front of it route over the new set at once."""
        runtime: Runtime = memo.runtime
        raw = event["object"]
        service = runtime.slices.delete(raw) if event["type"] == "DELETED" else runtime.slices.apply(raw)
        if service is None:
            return
        namespace, service_name = service
        for qualified, handler_spec in list(runtime.specs.items()):
            handler_namespace, handler = qualified.split("/", 1)
            if handler_namespace == namespace and (handler_spec.get("service") or {}).get("name") == service_name:
                await _publish(runtime, namespace, handler)

    return registry


def _pods(runtime: Runtime, namespace: str, spec: dict[str, Any]) -> list[endpoints.Endpoint] | None:
    """The Handler's pods from its Service's EndpointSlices; None to call its one address instead.

    A Service none of whose slices has been seen (none exist yet, or this
    operator may not list them) is called through its own address, as
    before replicas existed.
    """
    service = spec.get("service") or {}
    if spec.get("endpoint") or (namespace, str(service.get("name"))) not in runtime.slices.slices:
        return None
    return list(runtime.slices.endpoints(namespace, str(service.get("name")), int(service.get("port") or 0)))


def _schedule_event(runtime: Runtime, kind: str, obj: dict[str, Any]) -> None:
    """A Schedule's watch event (schedule_watch.py) into the engine; ``obj`` is the event's own object, which
    the engine copies what it keeps of."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = ScheduleKey(namespace, name)
    runtime.listing.saw(key)
    if kind == "DELETED":
        runtime.engine.remove_schedule(key)
        runtime.status_sink.seen(key, None)
        runtime.checkpointer.forget(key)
        runtime.uids.pop(("Schedule", namespace, name), None)
        return
    runtime.checkpointer.track(key)
    runtime.uids["Schedule", namespace, name] = meta["uid"]
    runtime.status_sink.seen(key, meta.get("resourceVersion"))
    runtime.engine.apply_schedule(
        key,
        uid=meta["uid"],
        spec=obj.get("spec") or {},
        created=_timestamp(meta.get("creationTimestamp")),
        generation=meta.get("generation"),
        status_=obj.get("status") or {},
    )
    annotations = meta.get("annotations") or {}
    if runtime.owns(namespace, name):
        if annotations.get(kubeapi.RUN_NOW_ANNOTATION):
            runtime.engine.run_now(key, str(annotations[kubeapi.RUN_NOW_ANNOTATION]))
        backfill = annotations.get(kubeapi.BACKFILL_ANNOTATION)
        runtime.engine.backfill(key, str(backfill) if backfill else None)  # None: cancels one still running


async def _publish(runtime: Runtime, namespace: str, name: str) -> None:
    """Tells the engine and the prober where the Handler is now: one address, or its ready pods."""
    qualified = f"{namespace}/{name}"
    spec = runtime.specs.get(qualified)
    if spec is None:
        return
    address, pods = _where(runtime, namespace, name, spec)
    serving = [pod.address for pod in pods if pod.serving] if pods is not None else [address]
    curve = runtime.curves.get(qualified)
    for endpoint in serving:
        await runtime.client.set_curve(endpoint, curve)
    runtime.engine.set_handler(namespace, name, _info(runtime, qualified, address, pods))
    before = runtime.serving.get(qualified, ())
    runtime.serving[qualified] = tuple(serving)
    runtime.prober.watch(qualified, serving)
    in_use = {endpoint for endpoints_ in runtime.serving.values() for endpoint in endpoints_}
    for endpoint in set(before) - in_use:  # a pod gone: closed once its calls in flight are answered
        runtime.client.retire(endpoint)


def _info(runtime: Runtime, qualified: str, address: str, pods: list[endpoints.Endpoint] | None) -> engine_.HandlerInfo:
    ready = tuple(pod.address for pod in pods if pod.ready) if pods is not None else None
    probed = runtime.probed.get(qualified)
    return engine_.HandlerInfo(
        address,
        runtime.methods.get(qualified),
        replicas=ready,
        reachable=probed.reachable if probed is not None else None,
        params=probed.params if probed is not None else None,
    )


async def _start(config: ControllerSettings) -> Runtime:
    api = kubeapi.Api(await kubeapi.connect())
    client = client_.Client()
    metrics = OperatorMetrics(per_schedule_histograms=config.per_schedule_histograms)
    budget = budget_.Budget(config.budget, on_grant=lambda kind: metrics.api_requests.labels(kind).inc())
    # reportingInstance names the replica: with several, `kubectl get events -o wide` says which one saw it.
    events = kubeapi.EventRecorder(api, interval=config.event_interval, instance=config.identity, budget=budget)
    uids: dict[tuple[str, str, str], str] = {}
    shards = config.ha.shards
    elector = election.Elector(election_thread.NotConnected(), identity=config.identity, settings=config.ha)

    async def connect_leases() -> tuple[election.LeaseStore, Callable[[], Awaitable[None]]]:
        """In the election's own loop: a client of its own, outside the budget (see election_thread)."""
        api_client = await kubeapi.connect()
        store = leases.KubeLeases(api_client, namespace=config.lease_namespace, prefix=config.ha.prefix)
        return store, api_client.close

    def progress(key: ScheduleKey, *, records: bool = False) -> tuple[str, engine_.Progress] | None:
        return runtime.engine.progress(key, records=records)

    checkpointer = checkpoints.Checkpointer(
        checkpoints.KubeCheckpoints(
            api.api_client, namespace=config.lease_namespace, prefix=config.ha.prefix, budget=budget
        ),
        progress=progress,
        shard_of=lambda key: election.shard_of(key.namespace, key.name, shards),
        owns_shard=lambda shard: runtime.owns_shard(shard),
        on_write=lambda shard, size: _checkpointed(runtime, shard, size),
    )
    status_sink = kubeapi.ScheduleStatusSink(api)
    engine = engine_.Engine(
        client=client,
        status_sink=status_sink,
        events=_EngineEvents(uids, events),
        metrics=metrics,
        settings=engine_.EngineSettings(
            status_interval=config.status_interval, startup_grace=10.0, identity=config.identity
        ),
        owner=lambda key: runtime.owns(key.namespace, key.name),
        on_progress=checkpointer.changed,
        budget=budget,
    )
    prober = probe.Prober(
        client,
        interval=config.probe_interval,
        on_result=lambda name, result: _probed(runtime, name, result),
        owns=lambda handler: runtime.owns(*handler.split("/", 1)),
    )
    runtime = Runtime(
        api=api,
        budget=budget,
        client=client,
        engine=engine,
        events=events,
        prober=prober,
        elector=elector,
        election=election_thread.ElectionThread(elector, connect_leases),
        checkpointer=checkpointer,
        ha_metrics=metrics.track_election(elector),
        status_sink=status_sink,
        uids=uids,
        listing=joining.Listing(config.joining),
        issuer=keys.KeyIssuer(
            SecretStore(api.core, budget),
            namespace=config.lease_namespace,
            mode=config.default_security,
            report=lambda *event: _report_keys(runtime, *event),
            byo=lambda namespace, secret: _byo_keys(runtime, namespace, secret),
            endpoints=lambda namespace, name: _base_endpoints(runtime, namespace, name),
            owns=lambda namespace, name: runtime.owns(namespace, name),
            overlap=max(3 * config.key_check_interval, 3.0),
        ),
    )
    client.on_connection = lambda endpoint, up: prober.poke(endpoint)  # a lost pod shows in status at once
    if config.metrics_port:
        metrics.serve(port=config.metrics_port, readiness=lambda: _readiness(runtime))
    events.start()
    await runtime.engine.start()
    runtime.prober.start()
    checkpointer.start()
    await runtime.issuer.start(
        on_change=lambda namespace, name, now: _keys_changed(runtime, namespace, name, now),
        interval=config.key_check_interval,
    )
    runtime.watch = schedule_watch.ScheduleWatch(
        api.api_client,
        on_event=functools.partial(_schedule_event, runtime),
        namespaces=config.namespaces,
        timeout=config.watch_timeout,
    )
    runtime.watch.start()
    runtime.joined = asyncio.get_running_loop().create_task(_join(runtime, config))
    log.info(
        "operator %s: %s, Leases %s-shard-N in %s",
        config.identity, text.count(shards, "shard"), config.ha.prefix, config.lease_namespace,
    )  # fmt: skip
    return runtime


async def _join(runtime: Runtime, config: ControllerSettings) -> None:
    """Enters the election once the watch has delivered every Schedule listed now (see joining.py)."""

    async def listed() -> set[ScheduleKey]:
        await runtime.budget.acquire("list")
        return await runtime.api.schedule_keys(config.namespaces)

    await runtime.listing.wait(listed)
    await runtime.election.start(
        on_acquired=lambda shard, generation: _acquired(runtime, shard, generation),
        on_lost=lambda shard, why: _lost(runtime, shard, why, lease_namespace=config.lease_namespace),
        before_release=lambda shard: runtime.checkpointer.hand_over(shard),
    )
    runtime.in_election = True


def _readiness(runtime: Runtime) -> tuple[bool, str]:
    """``/readyz``: ready once in the election, not before and not while stopping.

    A rolling update waits for a new replica to be ready before it stops an old one. Ready only once the
    newcomer has seen every Schedule means the old replica's shards go to replicas that can fire them at
    once, and the newcomer's initial listing (seconds of CPU at 10,000 Schedules) is over before the
    handover starts rather than competing with it. Runs on the metrics server's thread: plain reads only.
    """
    if runtime.stopping:
        return False, "stopping: handing its shards over"
    if not runtime.in_election:
        return False, f"joining the election: {runtime.listing.progress()}"
    return True, "in the election"


def _acquired(runtime: Runtime, shard: int, generation: int) -> None:
    """A shard is ours: nothing of it fires until its checkpoint is read and its Schedules caught up."""
    runtime.ha_metrics.transitions.labels("acquired").inc()
    runtime.spawn(_take_over(runtime, shard, generation))


async def _take_over(runtime: Runtime, shard: int, generation: int) -> None:
    try:
        progress = await runtime.checkpointer.load(shard)
    except Exception as error:  # status alone then says where each Schedule got to
        log.warning("checkpoint of shard %d unreadable (%s); catching up from status", shard, error)
        progress = {}
    if runtime.elector.generation.get(shard) != generation:
        return  # lost (and maybe acquired again) meanwhile: that acquisition takes over for itself
    runtime.taken[shard] = generation
    keys = runtime.checkpointer.keys(shard)
    until = runtime.elector.predecessor_until.get(shard)
    # A margin for the clocks of two nodes: the previous holder sent a time only once its own clock reached it.
    resend_until = None if until is None else datetime.datetime.fromtimestamp(until + CLOCK_SKEW, datetime.UTC)
    await runtime.engine.take_over(keys, progress, resend_until=resend_until)
    runtime.checkpointer.adopted(shard)
    log.info("shard %d: took over %s (holding %s)", shard, text.count(len(keys), "Schedule"), runtime.elector.held())


def _lost(runtime: Runtime, shard: int, why: str, *, lease_namespace: str) -> None:
    """Says where the shard's Schedules fire now: at another replica only if another is alive."""
    runtime.ha_metrics.transitions.labels("lost").inc()
    if election.edited(why):  # someone else wrote or deleted the Lease: an admin should know what it costs
        name = f"{runtime.elector.settings.prefix}-shard-{shard}"
        ref = kubeapi.ObjectRef("Lease", lease_namespace, name, "", api_version="coordination.k8s.io/v1")
        message = (
            f"shard {shard} dropped at once by {runtime.elector.identity}: {why}. Its Schedules fire again once "
            f"a replica takes the Lease, {runtime.elector.settings.lease_duration:.0f} s after the change; "
            "the runs due meanwhile are caught up then"
        )
        runtime.events.record(ref, warning=True, reason="ShardLeaseEdited", message=message)
    log.info("shard %d no longer ours (%s): %s", shard, why, _where_they_fire(runtime.elector.live_members))


def _where_they_fire(live_members: int) -> str:
    if live_members > 1:
        return "its Schedules fire at the replica that takes it over"
    return "no other replica is alive, so its Schedules fire once one starts and catches them up"


def _checkpointed(runtime: Runtime, shard: int, size: int) -> None:
    runtime.ha_metrics.checkpoint_writes.labels(str(shard)).inc()
    runtime.ha_metrics.checkpoint_size.labels(str(shard)).set(size)


async def _curve(
    runtime: Runtime, namespace: str, name: str, spec: dict[str, Any], *, request: str | None
) -> security.CurveClient | None:
    """The Handler's CURVE keys (its own Secret's, or issued), or None to call it in clear text (curve/issuer.py)."""
    known = runtime.issuer.unchanged(namespace, name, spec, request)
    if known is not None:
        return known.curve
    uid = runtime.uids.get(("Handler", namespace, name), "")
    return (await runtime.issuer.resolve(namespace, name, uid, spec, request=request)).curve


def _report_keys(runtime: Runtime, namespace: str, name: str, warning: bool, reason: str, message: str) -> None:
    ref = kubeapi.ObjectRef("Handler", namespace, name, runtime.uids.get(("Handler", namespace, name), ""))
    runtime.events.record(ref, warning=warning, reason=reason, message=message)


async def _keys_changed(runtime: Runtime, namespace: str, name: str, now: keys.Security) -> None:
    """A Secret re-read found other keys (or none): calls use them from now on."""
    runtime.curves[f"{namespace}/{name}"] = now.curve
    await _publish(runtime, namespace, name)


def _base_endpoints(runtime: Runtime, namespace: str, name: str) -> list[str]:
    """The Handler's ready pods (or its one address) at their own port, as a key rotation checks them."""
    spec = runtime.specs.get(f"{namespace}/{name}")
    if spec is None:
        return []
    pods = _pods(runtime, namespace, spec)
    return [pod.address for pod in pods if pod.ready] if pods is not None else [resolve_endpoint(namespace, spec)]


def _where(
    runtime: Runtime, namespace: str, name: str, spec: dict[str, Any]
) -> tuple[str, list[endpoints.Endpoint] | None]:
    """The Handler's address and pods as called now: at port + 1 while a key rotation has its callers there."""
    address, pods = resolve_endpoint(namespace, spec), _pods(runtime, namespace, spec)
    keys_now = runtime.issuer.state.get(f"{namespace}/{name}")
    if keys_now is None or not keys_now.rotation_port:
        return address, pods
    try:
        moved = [dataclasses.replace(pod, address=listeners.rotation_endpoint(pod.address)) for pod in pods or ()]
        return listeners.rotation_endpoint(address), moved if pods is not None else None
    except ValueError:  # not tcp://host:port: the rotation never gets past its first step for it
        return address, pods


async def _byo_keys(runtime: Runtime, namespace: str, secret_name: str) -> security.CurveClient:
    await runtime.budget.acquire("secret")
    return await runtime.api.curve_keys(namespace, secret_name)


def resolve_endpoint(namespace: str, spec: dict[str, Any]) -> str:
    """spec.endpoint as given, or the DNS name of spec.service in the Handler's namespace."""
    if spec.get("endpoint"):
        return str(spec["endpoint"])
    service = spec.get("service") or {}
    return f"tcp://{service.get('name')}.{namespace}.svc:{service.get('port')}"


def _probed(runtime: Runtime, qualified: str, results: list[probe.ProbeResult]) -> None:
    namespace, _, name = qualified.partition("/")
    spec = runtime.specs.get(qualified)
    if spec is None:  # deleted while probing
        return
    address, pods = _where(runtime, namespace, name, spec)
    listed = pods if pods is not None else [endpoints.Endpoint(address, address)]
    previous = runtime.handlers.get(qualified, {})
    summary = replicas.summarize(address, listed, results, previous, now=datetime.datetime.now(datetime.UTC))
    if summary.methods is not None:
        runtime.methods[qualified] = summary.methods
    runtime.probed[qualified] = summary
    runtime.engine.set_handler(namespace, name, _info(runtime, qualified, address, pods))
    if not runtime.owns(namespace, name):  # lost its shard while probing
        return
    was = next((c["status"] for c in previous.get("conditions", ()) if c.get("type") == "Reachable"), None)
    if not summary.reachable and was != "False":
        ref = kubeapi.ObjectRef("Handler", namespace, name, runtime.uids.get(("Handler", namespace, name), ""))
        message = "; ".join(summary.unreachable) or "no ready replica"
        runtime.events.record(ref, warning=True, reason="HandlerUnreachable", message=message)
    written = dict(summary.status)
    encrypted = keys.condition(
        runtime.issuer.state.get(qualified), previous.get("conditions") or (), now=datetime.datetime.now(datetime.UTC)
    )
    if encrypted is not None:
        written["conditions"] = [*written.get("conditions", ()), encrypted]
    runtime.handlers[qualified] = written
    runtime.spawn(_write_handler_status(runtime, namespace, name, written))


async def _write_handler_status(runtime: Runtime, namespace: str, name: str, handler_status: dict[str, Any]) -> None:
    try:
        await runtime.budget.acquire("handler-status")
        await runtime.api.patch_status("handlers", namespace, name, handler_status)
    except Exception as error:
        log.warning("status of Handler %s/%s not written: %s", namespace, name, error)


def _timestamp(text: Any) -> datetime.datetime:
    parsed = status.parse_rfc3339(text)
    return parsed if parsed is not None else datetime.datetime.now(datetime.UTC)
