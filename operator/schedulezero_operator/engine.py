"""The scheduling engine: Schedules and Handlers in, runs and status out.

It knows nothing of Kubernetes. The kopf operator and local mode feed it the
same way (``set_handler``, ``apply_schedule``, ``remove_schedule``,
``run_now``) and receive status through a ``StatusSink``. APScheduler's
``AsyncIOScheduler`` is only the timer: it wakes the engine at the times the
triggers compute and hands over the nominal times through a small executor;
every decision (missed, skipped, replaced, retried) is the engine's.

With several operator replicas, every engine knows every Schedule (a warm
standby: triggers parsed, timers running) but acts only for those it owns now,
as ``owner`` says, checked before every fire, status write and Event. Taking a
Schedule over (``take_over``) is a catch-up, as after a restart, from the newer
of its status and the progress its previous owner checkpointed.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from schedulezero_handler import client as client_
from schedulezero_handler import routing
from schedulezero_operator import budget as budget_
from schedulezero_operator import collector, inputs, runs, sinks, status, timer, triggers
from schedulezero_operator.errors import InvalidSchedule
from schedulezero_operator.metrics import OperatorMetrics
from schedulezero_operator.sinks import ScheduleKey

log = logging.getLogger(__name__)

UTC = datetime.UTC


MAX_BACKFILL = 1000
"""Nominal times one backfill request may run; a larger range is refused, naming the bound."""

MAX_BACKFILL_REQUEST = 512
"""Characters a backfill annotation may hold; a longer one is refused without being parsed."""

MAX_RUN_NOW_TOKEN = 128
"""Characters a run-now token may have: the token is kept in status, so a longer one is refused."""

MAX_UNWRITTEN = inputs.MAX_HANDED_RECORDS
"""Run records a Schedule hands over in a final checkpoint at most (the newest): more are unwritten only
under a status backlog of many runs, and a status keeps 3 of each kind by default."""
BURST_BATCH = 256
"""Due Schedules looked at per turn of the event loop: in a burst, a batch's calls are sent before the next."""
QUIET_PER_CALL = 50e-6
"""Seconds a burst's preparation of the next runs waits per call sent, about what a handler takes to start
a call: the engine stays off the CPU while the handlers start the burst (they may share the operator's cores)."""
MAX_QUIET = 0.25
"""Longest such wait, whatever the burst's size."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(UTC)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineSettings:
    status_interval: float = 2.0
    """At most one status write per Schedule per this many seconds."""
    status_settle: float = 0.5
    """How long a change waits before its status write: a run that ends within it costs one write, not two."""
    catch_up_limit: int = 1000
    """Missed times looked at after downtime or suspension, the most recent ones."""
    stop_grace: float = 10.0
    """On stop, how long runs in flight may finish before they are abandoned (not recorded)."""
    startup_grace: float = 0.0
    """After start, how long a run waits for its Handler to be seen. The operator sets it: watches
    deliver Schedules and Handlers in no fixed order, so a catch-up run may come before its Handler."""
    identity: str | None = None
    """This replica's name, sent with every call: a handler's journal then says who delivered each run."""


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a Schedule got, for a checkpoint: what a new owner must not miss nor run twice."""

    last_scheduled: datetime.datetime | None
    """The latest nominal time started (or judged missed or skipped)."""
    in_flight: tuple[datetime.datetime, ...] = ()
    """Nominal times of scheduled runs still in flight, or owed and waiting their turn in a catch-up: a new
    owner runs them under the same run ids."""
    records: tuple[dict[str, Any], ...] = ()
    """Run records (as rendered in status) no status write has carried yet. Only the final checkpoint of a
    replica handing a shard over has them: it releases the shard at once, and the next owner writes them."""


@dataclasses.dataclass(frozen=True)
class HandlerInfo:
    endpoint: str
    """The Handler's address: spec.endpoint, or its Service's name."""
    methods: frozenset[str] | None = None
    """The exposed methods, once a probe has seen them; None while unknown."""
    replicas: tuple[str, ...] | None = None
    """With a Service, its ready pods' endpoints, which runs are routed over by run id; None calls ``endpoint``."""
    reachable: bool | None = None
    """Whether the last probe reached it (any replica); None while not probed yet."""
    params: Mapping[str, tuple[Mapping[str, Any], ...]] | None = None
    """Each method's parameters as ``sys.describe`` declares them (name, required, variadic), once probed."""

    def route(self, run_id: bytes, *, down: Callable[[str], bool]) -> str | None:
        """Where an attempt of ``run_id`` goes: the first pod of its ranking that is not ``down``."""
        if self.replicas is None:
            return self.endpoint
        return routing.choose(run_id, self.replicas, down=down)


@dataclasses.dataclass(frozen=True, slots=True)
class Prepared:
    """What a Schedule's run at ``nominal`` needs that does not change until then."""

    nominal: datetime.datetime
    run_id: uuid.UUID
    following: datetime.datetime | None
    """The time after ``nominal``: what bounds the run's jitter and retries."""
    trigger: triggers.Trigger
    """The trigger ``following`` came from: a changed Schedule's no longer counts."""


@dataclasses.dataclass
class ScheduleState:
    """What the engine keeps per Schedule. Every replica keeps one for every Schedule it watches, so its
    containers are the cheapest that do: lists rather than deques (an empty deque takes 760 bytes)."""

    key: ScheduleKey
    uid: str
    spec: dict[str, Any]
    generation: int | None
    created: datetime.datetime
    parsed: status.History
    """The history as last parsed; read it as ``history``, which parses ``unread`` first."""
    trigger: triggers.Trigger | None = None
    invalid: str | None = None
    next_run_time: datetime.datetime | None = None
    active: dict[uuid.UUID, runs.Run] = dataclasses.field(default_factory=dict)
    unowned_since: datetime.datetime | None = None
    """The first time due while this engine did not own the Schedule, since it last fired it: a takeover
    catches up from there when neither status nor checkpoint says the Schedule ever ran."""
    owed: list[datetime.datetime] = dataclasses.field(default_factory=list)
    """Scheduled times waiting their turn in the chain: missed times a catch-up runs, and times that came
    due while an owed run was active (under Forbid and Replace they wait rather than being skipped)."""
    backfill_times: list[datetime.datetime] = dataclasses.field(default_factory=list)
    """A backfill's times not started yet; they run in the chain after any owed scheduled time."""
    chain: asyncio.Task[None] | None = None
    """The task running ``owed`` and ``backfill_times`` one after another, while there are any."""
    waiting: datetime.datetime | None = None
    """Under Forbid, a time that came due while the previous run was in flight: it starts when that run ends,
    or is Skipped if the following time comes due first. So a run that ends a moment late (a Busy handler, an
    operator lagging under load) delays the next one instead of costing it."""
    left: set[datetime.datetime] = dataclasses.field(default_factory=set)
    """Runs started here but fenced before their first send (the shard moved meanwhile): in flight as far as
    the checkpoint this replica writes as it hands the shard over is concerned, so the next owner runs them."""
    resend: set[datetime.datetime] = dataclasses.field(default_factory=set)
    """Owed times that a previous owner left in flight: sent again, and marked so in the call."""
    unwritten: list[status.RunRecord] = dataclasses.field(default_factory=list)
    """Run records no successful status write has carried yet (the newest ``MAX_UNWRITTEN``): what a
    replica handing the Schedule over puts in its final checkpoint instead of writing the status itself."""
    rendering: int = 0
    """How many of ``unwritten`` the status write in flight carries: they are dropped when it succeeds."""
    plan: tuple[dict[str, Any], float, runs.CallPlan] | None = None
    """The CallPlan of its runs, with the spec (by identity: a change replaces it) and the engine start it was
    made for."""
    prepared: Prepared | None = None
    """Its next run, worked out before the time, so that a burst does not (``Engine._prepare``)."""

    unread: dict[str, Any] | None = None
    """The status the owner last wrote, as a standby saw it and not parsed yet. A standby sees every status
    write of every Schedule as a watch event but needs the history only when it takes the Schedule over, so
    each event only keeps the newest status (the watch's own object, not a copy) and a takeover parses it."""

    @property
    def history(self) -> status.History:
        if self.unread is not None:
            raw, self.unread = self.unread, None
            self.parsed = inputs.restore_history(
                raw, uid=self.uid, spec=self.spec, created=self.created, now=utcnow(), trigger=self.trigger
            )
        return self.parsed

    @history.setter
    def history(self, history: status.History) -> None:
        self.parsed, self.unread = history, None

    @property
    def suspended(self) -> bool:
        return bool(self.spec.get("suspend"))

    @property
    def policy(self) -> str:
        return str(self.spec.get("concurrencyPolicy") or "Forbid")


def _timer_job() -> None:
    """APScheduler needs a job function; the executor never calls it."""


class Engine:
    def __init__(
        self,
        *,
        client: client_.Client,
        status_sink: sinks.StatusSink,
        events: sinks.EventSink | None = None,
        observer: sinks.RunObserver | None = None,
        metrics: OperatorMetrics | None = None,
        settings: EngineSettings | None = None,
        owner: Callable[[ScheduleKey], bool] | None = None,
        on_progress: Callable[[ScheduleKey], None] | None = None,
        budget: budget_.Budget | None = None,
    ) -> None:
        self.client = client
        self._owns = owner or _always
        """Whether this engine acts for a Schedule now (its shard's Lease is held and fresh)."""
        self._on_progress = on_progress
        """Told whenever a Schedule's Progress changes: a checkpoint renders again only the entries it was told
        of (and a few more in turn, in case)."""
        self.settings = settings or EngineSettings()
        self.metrics = metrics or OperatorMetrics()
        self._events = events
        self._observer = observer
        self._schedules: dict[ScheduleKey, ScheduleState] = {}
        self._handlers: dict[tuple[str, str], HandlerInfo] = {}
        self._by_handler: defaultdict[tuple[str, str], dict[ScheduleKey, ScheduleState]] = defaultdict(dict)
        """Each Handler's Schedules, with their state: a probe goes over them without a lookup each."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._firing: collections.deque[timer.Due] = collections.deque()
        """Due jobs the timer handed over and the engine has not looked at yet."""
        self._drained = asyncio.Event()
        """Set while no burst is being fired: runs ending meanwhile record their outcome after it."""
        self._drained.set()
        self._burst_held = False
        """Whether this engine holds the garbage collector and the client's replies off for a burst being fired."""
        self._settling: list[tuple[timer.Due, timer.Advanced]] = []
        """Due jobs fired in the burst under way, to move in the job store once its calls are out."""
        self._started = time.monotonic()
        self._writer = sinks.StatusWriter(
            status_sink,
            self.render_status,
            interval=self.settings.status_interval,
            settle=self.settings.status_settle,
            budget=budget,
            on_write=self.metrics.status_writes.inc,
            written=self._written,
        )
        self.metrics.track_status(self._writer, budget)
        # APScheduler logs every job added at INFO: with thousands of Schedules, noise.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self._scheduler = timer.Timer(
            on_due=self._fire, timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": False}
        )

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._started = time.monotonic()
        self._writer.start()
        self._scheduler.start()

    async def stop(self, *, flush: bool = True) -> None:
        """Stops firing, lets runs in flight finish (up to the grace), writes the last status.

        Runs still going after the grace are interrupted: they stay in ``active``,
        marked so, and run again under the same run ids when an engine resumes
        their Schedules (a handler that finished them answers from its cache).
        Without ``flush`` the statuses not written yet stay unwritten: a replica
        handing its shards over puts their run records in the final checkpoints
        (``progress(..., records=True)``), and the next owners write them.
        """
        self._scheduler.shutdown(wait=False)
        self._firing.clear()  # not looked at: not started, so the next owner (or this one, restarted) catches up
        self._settling.clear()
        self._drained.set()
        self._release_burst()
        active = [run for state in self._schedules.values() for run in state.active.values() if run.task]
        if active:
            _, late = await asyncio.wait([run.task for run in active if run.task], timeout=self.settings.stop_grace)
            for run in active:
                if run.task in late:
                    run.interrupted = "the engine stopped before the run finished; it runs again on resumption"
                    run.task.cancel()
            if late:
                await asyncio.wait(late)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pending, oldest = self._writer.backlog()
        if not flush:
            await self._writer.stop(flush=False)
            if pending:
                log.info("%d pending statuses (oldest change %.0f s) left to the next owners", pending, oldest)
            return
        if pending:  # its shards are handed over only after these: say why a rolling update waits
            log.info("writing up to %d pending statuses (oldest change %.0f s) before stopping", pending, oldest)
        await self._writer.stop()
        if pending:
            log.info("pending statuses written")

    async def write_statuses(self, keys: list[ScheduleKey]) -> None:
        """Writes these Schedules' statuses now, outside the budget: those whose run records a final
        checkpoint has no room for."""
        if keys:
            log.info("writing %d statuses whose run records the final checkpoints have no room for", len(keys))
            await self._writer.write_now(keys)

    # -- inputs -------------------------------------------------------------------

    def set_handler(self, namespace: str, name: str, info: HandlerInfo | None) -> None:
        """A Handler appeared, changed (endpoint, probed methods) or, with None, went away.

        Every probe lands here, and a Schedule's status is written only if what it
        says about the Handler changed. A probe that found the Handler as it was
        changes nothing a Schedule with a next run shows (its conditions depend on
        the time only once no time is left), so only the others are looked at:
        at 100,000 Schedules, recomputing every one held the event loop a second.
        """
        if info is None:
            previous = self._handlers.pop((namespace, name), None)
        else:
            previous, self._handlers[namespace, name] = self._handlers.get((namespace, name)), info
        unchanged = info is not None and info == previous
        for state in self._by_handler.get((namespace, name), {}).values():
            if not (unchanged and state.next_run_time is not None):
                self._refresh(state, only_if_changed=True)

    def apply_schedule(
        self,
        key: ScheduleKey,
        *,
        uid: str,
        spec: dict[str, Any],
        created: datetime.datetime,
        generation: int | None = None,
        status_: dict[str, Any] | None = None,
    ) -> str | None:
        """A Schedule was created, changed or seen again after a restart; returns why it is invalid, if it is.

        A Schedule first seen with a status (a restart) catches up from its
        ``lastScheduleTime``; a changed spec reschedules from now, keeping history;
        a resumed one goes on from now: what fell into its suspension is not a run.
        """
        state = self._schedules.get(key)
        if state is not None and state.uid != uid:  # deleted and re-created under the same name
            self.remove_schedule(key)
            state = None
        first_seen = state is None
        if state is None:  # status is an input: what cannot be the Schedule's own is dropped (inputs.py)
            history = inputs.restore_history(status_, uid=uid, spec=spec, created=created, now=utcnow())
            state = ScheduleState(key, uid, {}, generation, created, history)
            self._schedules[key] = state
            if self._owns(key) and (message := inputs.refused(state.history)) is not None:
                self._event(key, warning=True, reason="StatusRefused", message=message)
        elif state.spec == spec:
            state.generation = generation
            if status_ is not None and not self._owns(key):  # a standby follows what the owner wrote
                state.unread = status_
            return state.invalid
        self._index(state, spec)
        self._drop_waiting(state, "the Schedule changed while the run waited for the previous one")
        state.spec, state.generation, state.created = copy.deepcopy(dict(spec)), generation, created
        try:
            runs.check_params(spec.get("params"))
            state.trigger, state.invalid = triggers.build_trigger(spec, created=created), None
        except Exception as error:  # one Schedule's spec, however odd, costs only that Schedule
            if not isinstance(error, InvalidSchedule):
                log.exception("%s: cannot be scheduled", key)
                error = InvalidSchedule(f"cannot be scheduled: {type(error).__name__}: {error}")
            self._unschedule(state)
            state.trigger, state.invalid = None, str(error)
            self._event(key, warning=True, reason="InvalidSchedule", message=str(error))
            self._refresh(state)
            return state.invalid
        self.metrics.schedule_applied(key, suspended=state.suspended)
        if state.suspended:
            self._unschedule(state)
        else:
            # After a restart, the times the operator was away are caught up per catchUpPolicy. After a
            # suspension they are not runs at all: not missed, not run, and no Warning.
            restarted = first_seen and state.history.last_schedule_time is not None
            now = utcnow()
            if restarted and self._owns(key):
                self._catch_up(state, now=now)
            self._schedule_next(state, after=now)
        self._refresh(state)
        return None

    def remove_schedule(self, key: ScheduleKey) -> None:
        """The Schedule is gone: no further runs; runs in flight finish unrecorded."""
        state = self._schedules.pop(key, None)
        if state is None:
            return
        self._unschedule(state)
        self._index(state, {})
        self._writer.forget(key)
        self.metrics.forget(key)

    def run_now(self, key: ScheduleKey, token: str) -> bool:
        """Runs once now for a new token (schedulezero.io/run-now); False if the token was seen already.

        A token longer than ``MAX_RUN_NOW_TOKEN`` is refused, once: it would be
        copied into every later status write.
        """
        state = self._schedules.get(key)
        if state is None or not token:
            return False
        seen = _annotation_key(token, MAX_RUN_NOW_TOKEN)
        if seen == state.history.last_run_now_token:
            return False
        state.history.last_run_now_token = seen
        self._writer.mark(key)
        if len(token) > MAX_RUN_NOW_TOKEN:
            why = f"run-now token of {len(token)} characters, more than the {MAX_RUN_NOW_TOKEN} allowed: not run"
            self._event(key, warning=True, reason="RunNowRefused", message=why)
            return False
        self._due(state, utcnow(), run_id=runs.manual_run_id(state.uid, token), manual=True)
        return True

    def backfill(self, key: ScheduleKey, request: str | None) -> bool:
        """Runs the nominal times of a past range (schedulezero.io/backfill: JSON ``{"from", "to"}``).

        Each time runs under the run id it had, so a handler that still keeps its
        reply answers from its cache. They run in the Schedule's chain: one after
        another, or all at once under concurrencyPolicy Allow, and a scheduled time
        that comes due meanwhile goes first, so a backfill never holds back the
        Schedule's own runs. Only past times: a range reaching beyond now is
        refused. The same request again does nothing, whether it ran, runs or was
        refused; None (the annotation removed) cancels a backfill still running.
        Progress is in ``status.backfill``. False when nothing was started.
        """
        state = self._schedules.get(key)
        if state is None or state.trigger is None:
            return False
        known = state.history.backfill or {}
        if request is None:
            if known.get("state") == "Running":
                self._cancel_backfill(state)
            return False
        seen = _annotation_key(request, MAX_BACKFILL_REQUEST)
        again = known.get("request") == seen if "request" in known else _same_range(known, request)
        if again and known.get("state") != "Cancelled":
            return False  # asked again: done, running or refused already
        progress: dict[str, Any] = {"request": seen}
        if len(request) > MAX_BACKFILL_REQUEST:
            why = f"a backfill request of {len(request)} characters, more than the {MAX_BACKFILL_REQUEST} allowed"
            return self._backfill_refused(state, progress, why)
        try:
            asked = json.loads(request)
            start, end = triggers.parse_time(asked["from"], "from"), triggers.parse_time(asked["to"], "to")
        except (ValueError, KeyError, TypeError, InvalidSchedule) as error:
            why = f"not a backfill request {request!r:.200}: {error}"
            return self._backfill_refused(state, progress, why + ' (expected {"from": TIME, "to": TIME})')
        progress.update({"from": asked["from"], "to": asked["to"]})
        if end < start:
            return self._backfill_refused(state, progress, "to is before from")
        now = utcnow()
        if end > now:
            why = (
                f"to ({asked['to']}) is in the future: a backfill runs past times only, and times from now on "
                f"run on schedule; end the range before {status.rfc3339(now)}"
            )
            return self._backfill_refused(state, progress, why)
        times = triggers.fire_times(state.trigger, start - datetime.timedelta(microseconds=1), end, MAX_BACKFILL + 1)
        if len(times) > MAX_BACKFILL:
            why = f"more than {MAX_BACKFILL} times between {asked['from']} and {asked['to']}: split the range"
            return self._backfill_refused(state, progress, why)
        state.backfill_times.clear()
        state.backfill_times.extend(times)
        state.history.backfill = {**progress, "total": len(times), "done": 0, "state": "Running"}
        self._writer.mark(key)
        self._run_chain(state)
        return True

    def _backfill_refused(self, state: ScheduleState, progress: dict[str, Any], why: str) -> bool:
        state.history.backfill = {**progress, "total": 0, "done": 0, "state": "Refused", "message": why}
        self._event(state.key, warning=True, reason="BackfillRefused", message=why)
        self._writer.mark(state.key)
        return False

    def _cancel_backfill(self, state: ScheduleState) -> None:
        """The backfill annotation was removed: no further time of it starts; one in flight finishes."""
        progress = state.history.backfill
        assert progress is not None
        state.backfill_times.clear()
        in_flight = sum(1 for run in state.active.values() if run.trigger == "backfill")
        progress["state"] = "Cancelled"
        progress["message"] = (
            f"cancelled (annotation removed) after {progress.get('done', 0)} of {progress.get('total', 0)} times"
            + (f"; {_count(in_flight, 'run')} in flight at the cancel finishing" if in_flight else "")
        )
        self._event(state.key, warning=False, reason="BackfillCancelled", message=progress["message"])
        self._writer.mark(state.key)

    async def take_over(
        self,
        keys: list[ScheduleKey],
        checkpoint: dict[str, Progress],
        *,
        resend_until: datetime.datetime | None = None,
    ) -> None:
        """This engine now owns ``keys`` (a shard acquired): catches each up as after a restart.

        It starts from the newer of the Schedule's status and ``checkpoint``
        (Progress by Schedule uid), and runs again, under the same run ids, the
        runs either shows in flight. ``resend_until`` is when the previous holder
        may last have sent a run (its fencing deadline, as the election judges
        it): a caught-up time up to then may have reached the handler already,
        after the last checkpoint, so it goes out marked as a re-send. Thousands of Schedules are taken in
        batches, returning to the loop in between: their runs start sending
        meanwhile, and nothing else waits for the whole shard.
        """
        for number, key in enumerate(keys, start=1):
            if number % BURST_BATCH == 0:
                await asyncio.sleep(0)
            state = self._schedules.get(key)
            if state is None or not self._owns(key):
                continue
            progress = checkpoint.get(state.uid)
            if progress is not None:  # an input like status: what cannot be the Schedule's is dropped and said
                progress, dropped = inputs.checked_progress(
                    progress, uid=state.uid, trigger=state.trigger, now=utcnow()
                )
                if dropped:
                    self._event(
                        key, warning=True, reason="CheckpointRefused", message=inputs.summary("checkpoint", dropped)
                    )
                last = state.history.last_schedule_time
                if progress.last_scheduled is not None and (last is None or progress.last_scheduled > last):
                    state.history.last_schedule_time = progress.last_scheduled
                # The checkpoint is the later word on what is in flight: a time the status showed active (a
                # status written while the run ran, its later writes still waiting in the budget) that the
                # checkpoint has passed without listing it in flight has ended, and is not sent again.
                checked = progress.last_scheduled
                status_active = [
                    t for t in state.history.unfinished if checked is None or t > checked or t in progress.in_flight
                ]
                state.history.unfinished = sorted({*status_active, *progress.in_flight})
                self._adopt_records(state, progress.records)
            if (refused := inputs.refused(state.history)) is not None:
                self._event(key, warning=True, reason="StatusRefused", message=refused)
            # Only when neither the status (as this replica has seen it: it may lag) nor the checkpoint says
            # the Schedule ever ran: from the first time due while this replica watched without owning it.
            if state.history.last_schedule_time is None and state.unowned_since is not None:
                state.history.last_schedule_time = state.unowned_since - datetime.timedelta(microseconds=1)
            state.unowned_since = None
            # What it left unsent when it lost the shard runs now, marked as a re-send: another owner may have
            # run it meanwhile (its checkpoint, read above, says how far it got, but not which times it ran).
            state.history.unfinished = sorted({*state.history.unfinished, *state.left})
            state.left.clear()
            if state.invalid is not None:  # a new owner reports what its predecessor (or nobody yet) did
                self._event(key, warning=True, reason="InvalidSchedule", message=state.invalid)
            elif state.trigger is not None and not state.suspended:
                # one line per shard instead, from the caller
                now = utcnow()
                self._catch_up(state, now=now, level=logging.DEBUG, resend_until=resend_until)
                self._schedule_next(state, after=now)
            self._refresh(state)

    def _adopt_records(self, state: ScheduleState, handed: tuple[dict[str, Any], ...]) -> None:
        """Run records the previous owner handed over unwritten: recorded here (once: a status write of its
        may have landed after all), to be written with this owner's next status write."""
        known = {record.run_id for record in state.history.runs}
        for data in handed:
            record = status.RunRecord.restore(data)
            if record is None or record.run_id in known:
                continue
            known.add(record.run_id)
            state.history.unfinished = [t for t in state.history.unfinished if t != record.scheduled_time]
            # Into the history only: the previous owner counted it in its metrics and posted its Events.
            self._keep(state, record)

    def progress(self, key: ScheduleKey, *, records: bool = False) -> tuple[str, Progress] | None:
        """The Schedule's uid and Progress, for its shard's checkpoint; with ``records``, for the final one,
        with the run records no status write has carried yet."""
        state = self._schedules.get(key)
        if state is None:
            return None
        in_flight = [run.nominal for run in state.active.values() if run.id == runs.run_id(state.uid, run.nominal)]
        owed = {*in_flight, *state.owed, *state.left, *([state.waiting] if state.waiting is not None else [])}
        unwritten = tuple(record.render() for record in state.unwritten) if records else ()
        return state.uid, Progress(state.history.last_schedule_time, tuple(sorted(owed)), unwritten)

    def _written(self, key: ScheduleKey) -> None:
        """A status write succeeded: the run records it carried are the status's now."""
        state = self._schedules.get(key)
        if state is not None:
            del state.unwritten[: state.rendering]
            state.rendering = 0

    # -- outputs ------------------------------------------------------------------

    def render_status(self, key: ScheduleKey) -> dict[str, Any] | None:
        """The status to write, or None: gone, or owned by another replica (which writes it)."""
        state = self._schedules.get(key)
        if state is None or not self._owns(key):
            return None
        rendered = state.history.render()
        state.rendering = len(state.unwritten)
        rendered["observedGeneration"] = state.generation
        rendered["nextRunTime"] = status.rfc3339(state.next_run_time)
        rendered["active"] = [run.render() for run in state.active.values()]
        if state.waiting is not None:
            rendered["active"].append(
                {
                    "runId": str(runs.run_id(state.uid, state.waiting)),
                    "scheduledTime": status.rfc3339(state.waiting),
                    "waiting": "for the previous run to end (concurrencyPolicy Forbid)",
                }
            )
        rendered["updatedTime"] = status.rfc3339(utcnow())
        return rendered

    def schedule_keys(self) -> list[ScheduleKey]:
        return list(self._schedules)

    # -- scheduling ---------------------------------------------------------------

    def _schedule_next(self, state: ScheduleState, *, after: datetime.datetime) -> None:
        assert state.trigger is not None
        state.next_run_time = state.trigger.next_after(after)
        job_id = str(state.key)
        if state.next_run_time is None:
            self._unschedule(state)
            return
        self._scheduler.add_job(
            _timer_job, trigger=state.trigger, id=job_id, replace_existing=True, next_run_time=state.next_run_time
        )
        self._show_next_run(state)
        self._prepare(state)

    def _prepare(self, state: ScheduleState) -> None:
        """Works out ahead of its next time what a run needs that does not change until then: its run id and
        its CallPlan. Done when the Schedule is scheduled and after each burst, so that a burst only starts runs."""
        nominal, trigger = state.next_run_time, state.trigger
        if nominal is not None and trigger is not None:
            identity = runs.run_id(state.uid, nominal)
            state.prepared = Prepared(nominal, identity, trigger.next_after(nominal), trigger)
            self._plan(state)

    def _prepared(self, state: ScheduleState, nominal: datetime.datetime) -> Prepared | None:
        prepared = state.prepared
        if prepared is not None and prepared.nominal == nominal and prepared.trigger is state.trigger:
            return prepared
        return None

    def _unschedule(self, state: ScheduleState) -> None:
        state.next_run_time = None
        job = self._scheduler.get_job(str(state.key))
        if job is not None:
            job.remove()
        self._show_next_run(state)

    def _show_next_run(self, state: ScheduleState) -> None:
        self.metrics.next_run(state.key, state.next_run_time)

    def _fire(self, due: list[timer.Due]) -> None:
        """The timer's hand-over of every job due at its wake-up: queued, and looked at batch by batch.

        The burst holds the garbage collector off (``collector.py``) until its calls have been sent, and
        the client's replies: the replies to its first calls would otherwise resume their runs between
        the burst's sends, and the last call would leave after the first runs' records were made.
        """
        self._firing.extend(due)
        if self._drained.is_set():
            self._drained.clear()
            if not self._burst_held:
                self._burst_held = True
                collector.hold()
                self.client.hold_replies()
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Fires a batch of the due Schedules, and leaves the rest for the next turn of the loop.

        The runs started here send their first calls as soon as the loop runs
        their tasks, which it does before the next batch: with thousands due
        at the same instant, the first calls leave long before the last
        Schedules are looked at.
        """
        for _ in range(min(BURST_BATCH, len(self._firing))):
            due = self._firing.popleft()
            try:
                advanced = self._scheduler.advance(due)
            except Exception:  # its timer goes, rather than coming due again and again
                log.exception("%s: not fired, and no longer scheduled", due.job.id)
                self._scheduler.discard(due)
                continue
            self._settling.append((due, advanced))
            try:
                self._fire_now(due, advanced)
            except Exception:  # one Schedule, however broken, neither stops the burst nor the ones after it
                log.exception("%s: not fired", due.job.id)
        loop = asyncio.get_running_loop()
        if self._firing:
            loop.call_soon(self._drain)
        else:
            self._drained.set()
            # After the first steps of the tasks just started, which send their calls: they were queued first.
            loop.call_soon(self._burst_sent)

    def _burst_sent(self) -> None:
        """The burst's calls are out: its jobs move to their next times, and the timer, the collector and the
        replies resume at once (a reply held longer would keep its run active, and under Forbid the next time
        would wait for it).

        For a large burst, the next-run gauges and the preparation of each Schedule's next run wait while the
        handlers start the burst's calls: none of it is due before the next times, and done at once it took
        the CPU from the handlers while they still had the burst's last calls to start.
        """
        settling, self._settling = self._settling, []
        for due, advanced in settling:
            try:
                self._scheduler.settle(due, advanced)
            except Exception:  # its Schedule's timer is lost, not the others'
                log.exception("%s: not rescheduled", due.job.id)
        self._scheduler.resume()
        self._release_burst()
        if len(settling) < BURST_BATCH:
            self._after_burst(settling)
        else:
            quiet = min(MAX_QUIET, QUIET_PER_CALL * len(settling))
            asyncio.get_running_loop().call_later(quiet, self._after_burst, settling)

    def _after_burst(self, settled: list[tuple[timer.Due, timer.Advanced]]) -> None:
        """The next-run gauges follow, and the Schedules' next runs are prepared."""
        for due, _ in settled:
            state = self._schedules.get(_job_key(due.job.id))
            if state is not None:
                self._show_next_run(state)
                self._prepare(state)

    def _release_burst(self) -> None:
        if self._burst_held and self._drained.is_set():
            self._burst_held = False
            collector.release()
            self.client.release_replies()

    def _fire_now(self, due: timer.Due, advanced: timer.Advanced) -> None:
        run_times = advanced.run_times
        state = self._schedules.get(_job_key(due.job.id))
        if state is None or state.trigger is None or not run_times:
            return
        # The job changed since the wake-up: the next time from the Schedule's trigger as it is now. Its gauge
        # follows once the burst's calls are out.
        state.next_run_time = advanced.following if advanced.current else state.trigger.next_after(run_times[-1])
        if not self._owns(state.key):  # fenced: its owner fires it, or a new one catches up
            state.unowned_since = state.unowned_since or run_times[0]
            return
        state.unowned_since = None
        # A time at or before lastScheduleTime was started or decided already: by a takeover's catch-up that
        # ran while this fire waited in the queue (a busy loop), or by the previous owner, whose status says so.
        last = state.history.last_schedule_time
        for nominal in run_times:
            if last is None or nominal > last:
                self._due(state, nominal)
        if state.next_run_time is None:
            self._refresh(state)

    def _catch_up(
        self,
        state: ScheduleState,
        *,
        now: datetime.datetime,
        level: int = logging.INFO,
        resend_until: datetime.datetime | None = None,
    ) -> None:
        """Applies catchUpPolicy to the times missed since lastScheduleTime, up to ``now``.

        The caller schedules the next time after the very same ``now``: a time
        falling between two readings of the clock would be neither caught up nor
        fired, and lost for good.
        """
        assert state.trigger is not None
        last = state.history.last_schedule_time
        if last is None:
            return
        recorded = {run.run_id for run in state.history.runs}
        # Runs in flight when the operator stopped were started, not missed: they run again whatever
        # the policy, under the same run ids, so a handler that finished them answers from its cache.
        unfinished = [t for t in state.history.unfinished if str(runs.run_id(state.uid, t)) not in recorded]
        state.history.unfinished = []
        times, total = _missed_times(state.trigger, last, now, self.settings.catch_up_limit)
        times = [t for t in times if str(runs.run_id(state.uid, t)) not in recorded]
        if not times and not unfinished:
            return
        policy = str(state.spec.get("catchUpPolicy") or "Latest")
        deadline = state.spec.get("startingDeadlineSeconds")
        eligible = [t for t in times if deadline is None or (now - t).total_seconds() <= deadline]
        to_run = [] if policy == "Skip" else eligible[-1:] if policy == "Latest" else eligible
        missed = [t for t in times if t not in to_run]
        not_run = total - len(to_run)
        to_run = sorted({*to_run, *unfinished})
        log.log(
            level,
            "%s: catching up from %s: %d times due, %d not run (catchUpPolicy %s), %d in flight at the stop; "
            "running %d",
            state.key, status.rfc3339(last), total, not_run, policy, len(unfinished), len(to_run),
        )  # fmt: skip
        if times:
            state.history.last_schedule_time = times[-1]
            self._progressed(state.key)
        for nominal in missed:
            self._record_unrun(state, nominal, status.Outcome.MISSED, "not started in time (operator down)")
        state.history.counters["missed"] += total - len(times)
        if not_run:
            self._event(
                state.key,
                warning=True,
                reason="MissedSchedule",
                message=f"{_count(not_run, 'run')} missed since {status.rfc3339(last)}, of {total} due; "
                f"catchUpPolicy {policy} runs {len(to_run) - len(unfinished)} of them",
            )
        resend = {*unfinished, *(t for t in to_run if resend_until is not None and t <= resend_until)}
        if len(to_run) == 1 and not state.active and not state.owed:
            self._start(state, to_run[0], resent=to_run[0] in resend, owed=policy == "All")
        elif to_run:
            state.resend.update(resend)
            state.owed.extend(to_run)
            self._progressed(state.key)
            self._run_chain(state)

    def _owed_active(self, state: ScheduleState) -> bool:
        """Whether a run the Schedule owes (a catch-up's under All, a backfill's) is active now."""
        return any(run.owed for run in state.active.values())

    def _run_chain(self, state: ScheduleState) -> None:
        """Starts the Schedule's chain unless it runs already."""
        if state.chain is None or state.chain.done():
            state.chain = self._spawn(self._chain(state))

    async def _chain(self, state: ScheduleState) -> None:
        """Runs a Schedule's owed times one at a time: owed scheduled times first, then a backfill's.

        Under Forbid and Replace a run of the chain waits for the runs already
        active, so two runs never overlap; under Allow a backfill's times start
        all at once. The chain stops when this replica no longer owns the
        Schedule: owed scheduled times are in its checkpoint, and its new owner
        runs them; a backfill is marked Interrupted.
        """
        key = state.key
        while self._schedules.get(key) is state and (state.owed or state.backfill_times):
            if not self._owns(key):
                break
            waiting = [run.task for run in state.active.values() if run.task is not None]
            if waiting and state.policy != "Allow":
                await asyncio.wait(waiting)
                continue
            if state.owed:
                nominal = state.owed.pop(0)
                resent = nominal in state.resend
                state.resend.discard(nominal)
                run = self._start(state, nominal, resent=resent, owed=True)
                started = [run] if run is not None else []
                self._progressed(key)
                backfilled = 0
            else:
                batch = list(state.backfill_times) if state.policy == "Allow" else [state.backfill_times[0]]
                for _ in batch:
                    state.backfill_times.pop(0)
                started = [r for r in (self._start(state, t, trigger="backfill", owed=True) for t in batch) if r]
                backfilled = len(batch)
            tasks = [run.task for run in started if run.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            if backfilled and state.history.backfill is not None:
                state.history.backfill["done"] = int(state.history.backfill.get("done") or 0) + backfilled
                self._writer.mark(key)
        progress = state.history.backfill
        if progress is not None and progress.get("state") == "Running":
            if state.backfill_times:  # its new owner does not resume it
                progress["state"] = "Interrupted"
                state.backfill_times.clear()
            else:
                progress["state"] = "Complete"
            self._writer.mark(key)

    def _due(
        self, state: ScheduleState, nominal: datetime.datetime, *, run_id: uuid.UUID | None = None, manual: bool = False
    ) -> None:
        """A run is due: decides missed, skipped, replaced or started."""
        if not manual:
            last = state.history.last_schedule_time
            state.history.last_schedule_time = nominal if last is None else max(last, nominal)
            self._progressed(state.key)
        deadline = state.spec.get("startingDeadlineSeconds")
        if deadline is not None and not manual and (utcnow() - nominal).total_seconds() > deadline:
            self._record_unrun(state, nominal, status.Outcome.MISSED, f"not started within {deadline} s of its time")
            self._event(
                state.key,
                warning=True,
                reason="MissedSchedule",
                message=f"run of {status.rfc3339(nominal)} missed its deadline",
            )
            return
        if state.active and state.policy != "Allow" and not manual and self._owed_active(state):
            # A catch-up (under All) or a backfill owes these times: one due now waits its turn rather
            # than being skipped, and runs before any backfill time still waiting.
            state.owed.append(nominal)
            self._progressed(state.key)
            self._run_chain(state)
            return
        if state.active:
            if state.policy == "Forbid" and manual:
                self._skip(state, nominal, "the previous run was still running", run_id=run_id)
                return
            if state.policy == "Forbid":
                if state.waiting is not None:
                    self._skip(state, state.waiting, "the previous run was still running when the next time came")
                state.waiting = nominal
                self._writer.mark(state.key)
                self._progressed(state.key)
                return
            if state.policy == "Replace":
                self._replace(state)
        self._start(state, nominal, run_id=run_id, trigger="run-now" if manual else "schedule")

    def _skip(
        self, state: ScheduleState, nominal: datetime.datetime, why: str, *, run_id: uuid.UUID | None = None
    ) -> None:
        self._record_unrun(state, nominal, status.Outcome.SKIPPED, why, run_id=run_id)
        message = f"run of {status.rfc3339(nominal)} skipped: previous run active"
        self._event(state.key, warning=True, reason="Skipped", message=message)

    def _start_waiting(self, state: ScheduleState) -> None:
        """Starts the time that waited for the run that just ended (Forbid), now that none is in flight."""
        if state.waiting is None or state.active or self._schedules.get(state.key) is not state:
            return
        nominal, state.waiting = state.waiting, None
        self._progressed(state.key)
        if self._start(state, nominal) is None and not self._owns(state.key):
            log.debug("%s: run of %s left to the new owner", state.key, status.rfc3339(nominal))

    def _drop_waiting(self, state: ScheduleState, why: str) -> None:
        if state.waiting is not None:
            nominal, state.waiting = state.waiting, None
            self._progressed(state.key)
            self._record_unrun(state, nominal, status.Outcome.SKIPPED, why)

    def _replace(self, state: ScheduleState) -> None:
        handler = self._handlers.get((state.key.namespace, str(state.spec.get("handler"))))
        for run in list(state.active.values()):
            if run.task is not None:
                run.cancelled = "replaced by a newer run (concurrencyPolicy Replace)"
                run.task.cancel()
            endpoint = handler.route(run.id.bytes, down=self.client.is_down) if handler is not None else None
            if endpoint is not None:
                self._spawn(self._cancel_remote(endpoint, run.id))

    async def _cancel_remote(self, endpoint: str, run_id: uuid.UUID) -> None:
        try:
            await self.client.cancel(endpoint, run_id.bytes)
        except Exception as error:
            log.info("could not cancel run %s at %s: %s", run_id, endpoint, error)

    def _start(
        self,
        state: ScheduleState,
        nominal: datetime.datetime,
        *,
        run_id: uuid.UUID | None = None,
        trigger: str = "schedule",
        resent: bool = False,
        owed: bool = False,
    ) -> runs.Run | None:
        prepared = self._prepared(state, nominal)
        identity = run_id or (prepared.run_id if prepared is not None else runs.run_id(state.uid, nominal))
        if identity in state.active:
            return None
        if not self._owns(state.key):  # lost a moment ago: the next owner runs it
            if identity == runs.run_id(state.uid, nominal):
                state.left.add(nominal)
            return None
        if prepared is not None:
            following = prepared.following
        else:
            following = state.trigger.next_after(nominal) if state.trigger is not None else None
        room = (following - nominal).total_seconds() if following is not None else None
        target = nominal + datetime.timedelta(
            seconds=runs.jitter(identity, max_seconds=float(state.spec.get("jitterSeconds") or 0), room=room)
        )
        run = runs.Run(
            id=identity,
            schedule=str(state.key),
            nominal=nominal,
            # A backfilled time is long past: the next run's time does not bound its retries.
            retry_until=following if state.policy != "Allow" and trigger != "backfill" else None,
            delay=max(0.0, (target - utcnow()).total_seconds()),
            trigger=trigger,
            resent=resent,
            owed=owed,
        )
        run.task = asyncio.get_running_loop().create_task(self._carry(state, run, self._plan(state)))
        state.active[identity] = run
        self._writer.mark(state.key)
        self._progressed(state.key)
        return run

    def _plan(self, state: ScheduleState) -> runs.CallPlan:
        """What every run of the Schedule calls: made once per spec, not per run (a burst makes thousands)."""
        cached = state.plan
        if cached is not None and cached[0] is state.spec and cached[1] == self._started:
            return cached[2]
        spec = state.spec
        handler = str(spec.get("handler"))
        handler_key = (state.key.namespace, handler)
        retry = spec.get("retry") or {}

        def route(run_id: bytes) -> str | None:
            info = self._handlers.get(handler_key)
            return info.route(run_id, down=self.client.is_down) if info is not None else None

        plan = runs.CallPlan(
            owns=lambda: self._owns(state.key),
            sender=self.settings.identity,
            route=route,
            exists=lambda: handler_key in self._handlers,
            handler_until=self._started + self.settings.startup_grace,
            handler=f"{state.key.namespace}/{handler}",
            method=str(spec.get("method")),
            params=dict(spec.get("params") or {}),
            timeout=float(spec.get("timeoutSeconds") or 60),
            retry=client_.RetryPolicy(
                max_attempts=int(retry.get("maxAttempts", 3)),
                backoff=float(retry.get("backoffSeconds", 1)),
                max_backoff=float(retry.get("maxBackoffSeconds", 60)),
            ),
        )
        state.plan = (spec, self._started, plan)
        return plan

    async def _carry(self, state: ScheduleState, run: runs.Run, plan: runs.CallPlan) -> status.RunRecord | None:
        try:
            record = await runs.execute(
                run, plan, client=self.client, metrics=self.metrics, on_attempt=lambda: self._writer.mark(state.key)
            )
        except asyncio.CancelledError:
            if run.interrupted is None:
                raise
            self._writer.mark(state.key)  # shows it in active as interrupted
            return None
        except runs.Fenced as fenced:
            # Not recorded here: this replica may no longer write the Schedule's status. The new owner
            # re-sends the run if the last checkpoint had it in flight, or judges its time by catchUpPolicy.
            state.active.pop(run.id, None)
            if run.id == runs.run_id(state.uid, run.nominal):
                state.left.add(run.nominal)
            self.metrics.fenced_sends.inc()
            log.info("%s; left to the new owner", fenced)
            return None
        # Ended: it no longer holds the Schedule's slot, even while its record waits for a burst's calls to go
        # out first (a Forbid Schedule whose next time is in that burst must not see it as still running).
        state.active.pop(run.id, None)
        self._start_waiting(state)
        if not self._drained.is_set():
            await self._drained.wait()
        if self._schedules.get(state.key) is state:  # not removed or re-created meanwhile
            self._progressed(state.key)
            self._finish(state, record)
        return record

    def _keep(self, state: ScheduleState, record: status.RunRecord) -> None:
        """Puts a finished run in the history, and among the records the next status write carries."""
        state.history.record(
            record,
            successful_limit=int(state.spec.get("successfulRunsHistoryLimit", 3)),
            failed_limit=int(state.spec.get("failedRunsHistoryLimit", 3)),
        )
        state.unwritten.append(record)
        if (beyond := len(state.unwritten) - MAX_UNWRITTEN) > 0:
            del state.unwritten[:beyond]
            state.rendering = max(0, state.rendering - beyond)

    def _finish(self, state: ScheduleState, record: status.RunRecord) -> None:
        key = state.key
        self._keep(state, record)
        handler = f"{key.namespace}/{state.spec.get('handler')}"
        self.metrics.run_ended(key, record, handler=handler, method=str(state.spec.get("method")))
        if record.outcome in (status.Outcome.FAILED, status.Outcome.TIMED_OUT) and record.error is not None:
            tries = f"after {_count(record.attempts, 'attempt')}" if record.attempts else "without a call"
            message = f"run of {status.rfc3339(record.scheduled_time)} {record.outcome} {tries}: "
            self._event(key, warning=True, reason="RunFailed", message=message + record.error["message"])
        if self._observer is not None:
            self._observer.run_finished(key, record.render())
        self._refresh(state)

    def _record_unrun(
        self,
        state: ScheduleState,
        nominal: datetime.datetime,
        outcome: status.Outcome,
        why: str,
        *,
        run_id: uuid.UUID | None = None,
    ) -> None:
        record = status.RunRecord(
            run_id=str(run_id or runs.run_id(state.uid, nominal)),
            scheduled_time=nominal,
            outcome=outcome,
            error={"type": str(outcome), "message": why},
        )
        self._finish(state, record)

    # -- conditions ---------------------------------------------------------------

    def _refresh(self, state: ScheduleState, *, only_if_changed: bool = False) -> None:
        """Recomputes the conditions (Ready, Suspended, Completed) and queues a status write; with
        ``only_if_changed``, only if a condition changed (a Handler probe that found all as it was).
        Only the owner's conditions are written, so a standby computes none (a takeover does)."""
        if not self._owns(state.key):
            return
        conditions = state.history.conditions
        before = {t: (c.status, c.reason, c.message, c.observed_generation) for t, c in conditions.items()}
        now = utcnow()
        completed = self._completion(state, now)
        ready = self._readiness(state, completed)
        suspended = (
            ("True", "Suspended", "spec.suspend is true: no runs until it is false")
            if state.suspended
            else ("False", "NotSuspended", "spec.suspend is false")
        )
        finished = ("True", *completed) if completed is not None else ("False", "TimesRemain", "more runs will come")
        for type_, (status_, reason, message) in (("Ready", ready), ("Suspended", suspended), ("Completed", finished)):
            state.history.set_condition(type_, status_, reason, message, now=now, generation=state.generation)
        after = {t: (c.status, c.reason, c.message, c.observed_generation) for t, c in conditions.items()}
        if not only_if_changed or after != before:
            self._writer.mark(state.key)

    def _readiness(self, state: ScheduleState, completed: tuple[str, str] | None) -> tuple[str, str, str]:
        """Whether the Schedule can run as specified; a suspension is its own condition, not a reason.

        Ready is a report, not a gate: while the Handler is missing, unreachable or
        refuses the method or params, runs still fire and fail with the handler's
        error (the probe that judged may be seconds old), and the message says so.
        A Schedule whose times have all come and gone after it ran is Ready and
        Completed; one none of whose times ever came is not Ready.
        """
        if state.invalid is not None:
            return "False", "InvalidSchedule", state.invalid
        handler, method = str(state.spec.get("handler")), str(state.spec.get("method"))
        info = self._handlers.get((state.key.namespace, handler))
        meanwhile = "; runs still fire, and fail, until it is fixed" if completed is None else ""
        if info is None:
            where = f"Handler {handler!r} not found in namespace {state.key.namespace!r}"
            return "False", "HandlerNotFound", where + meanwhile
        if info.reachable is False:
            return "False", "HandlerUnreachable", f"Handler {handler!r} did not answer its last probe" + meanwhile
        if info.methods is not None and method not in info.methods:
            exposed = ", ".join(sorted(info.methods)) or "none"
            why = f"Handler {handler!r} does not expose {method!r} (exposes: {exposed})"
            return "False", "MethodNotFound", why + meanwhile
        rejected = _params_rejected(dict(state.spec.get("params") or {}), (info.params or {}).get(method))
        if rejected is not None:
            return "False", "InvalidParams", f"{method}: {rejected}" + meanwhile
        if completed is not None:
            if state.history.last_schedule_time is not None or any(state.history.counters.values()):
                return "True", "Completed", f"every time has come and gone: {completed[1]}"
            return "False", *completed
        if state.suspended:
            return "True", "Scheduled", "suspended: runs resume when spec.suspend is false"
        return "True", "Scheduled", f"next run at {status.rfc3339(state.next_run_time)}"

    def _completion(self, state: ScheduleState, now: datetime.datetime) -> tuple[str, str] | None:
        """(reason, message) when no time can ever come again and no run is left in flight."""
        trigger = state.trigger
        if trigger is None or state.active or state.next_run_time is not None:
            return None
        if state.suspended and trigger.next_after(now) is not None:  # unscheduled, not finished
            return None
        spec = state.spec
        if spec.get("runAt") is not None:
            return "RunAtPassed", f"the one run, at {spec['runAt']}, is past"
        if trigger.end is not None and trigger.end <= now:
            return "EndTimeReached", f"endTime {spec.get('endTime')} is past"
        if trigger.end is not None:
            return "NoTimeLeft", f"schedule {spec.get('schedule')!r} has no time left before endTime {spec['endTime']}"
        return "NoMatchingTime", f"schedule {spec.get('schedule')!r} matches no date (in the next 9 years)"

    # -- helpers ------------------------------------------------------------------

    def _index(self, state: ScheduleState, spec: dict[str, Any]) -> None:
        old = (state.key.namespace, str(state.spec.get("handler")))
        self._by_handler[old].pop(state.key, None)
        if spec:
            self._by_handler[state.key.namespace, str(spec.get("handler"))][state.key] = state

    def _event(self, key: ScheduleKey, *, warning: bool, reason: str, message: str) -> None:
        if not self._owns(key):  # its owner reports it
            return
        log.info("%s: %s: %s", key, reason, message)
        if self._events is not None:
            self._events.event(key, warning=warning, reason=reason, message=message)

    def _progressed(self, key: ScheduleKey) -> None:
        if self._on_progress is not None:
            self._on_progress(key)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _always(key: ScheduleKey) -> bool:
    return True


def _job_key(job_id: str) -> ScheduleKey:
    namespace, _, name = job_id.partition("/")
    return ScheduleKey(namespace, name)


def _params_rejected(params: dict[str, Any], declared: tuple[Mapping[str, Any], ...] | None) -> str | None:
    """Why ``params`` do not fit a method's declared parameters (names only: types are the handler's to
    check), or None; None too while the declaration is unknown."""
    if declared is None:
        return None
    names = {str(p.get("name")) for p in declared if not p.get("variadic")}
    missing = sorted(str(p.get("name")) for p in declared if p.get("required") and p.get("name") not in params)
    if missing:
        return f"spec.params lacks the required parameter {missing[0]!r}"
    if not any(p.get("variadic") for p in declared):
        unexpected = sorted(set(params) - names)
        if unexpected:
            takes = ", ".join(sorted(names)) or "none"
            return f"spec.params has {unexpected[0]!r}, which the method does not take (takes: {takes})"
    return None


def _annotation_key(value: str, limit: int) -> str:
    """What status keeps of an annotation's value to know it again: the value, or a digest if too long."""
    if len(value) <= limit:
        return value
    return "sha256:" + hashlib.sha256(value.encode(errors="surrogatepass")).hexdigest()


def _same_range(known: dict[str, Any], request: str) -> bool:
    """Whether a status written before requests were kept names the same range as ``request``."""
    try:
        asked = json.loads(request)
        return isinstance(asked, dict) and (known.get("from"), known.get("to")) == (asked.get("from"), asked.get("to"))
    except ValueError:
        return False


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _missed_times(
    trigger: triggers.Trigger, after: datetime.datetime, until: datetime.datetime, limit: int
) -> tuple[list[datetime.datetime], int]:
    """The most recent ``limit`` nominal times in (after, until], and how many there were in all."""
    times: collections.deque[datetime.datetime] = collections.deque(maxlen=limit)
    total = 0
    current = trigger.next_after(after)
    while current is not None and current <= until:
        total += 1
        times.append(current)
        if total >= 1_000_000:  # bounded work even for @every 1s after a long outage
            break
        current = trigger.next_after(current)
    return list(times), total
