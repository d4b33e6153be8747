"""Carrying one run through: jitter, attempts with backoff, and its record.

A run's identity is derived from its Schedule and nominal time, and it is the
call id on the wire, so a handler that sees the same run twice (a retry after a
lost reply, a re-fire after an operator crash) answers from its reply cache
instead of running it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from schedulezero_handler import client as client_
from schedulezero_handler import errors, protocol
from schedulezero_operator import status
from schedulezero_operator.errors import InvalidSchedule
from schedulezero_operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)

RUN_NAMESPACE = uuid.UUID("6f0c3d1e-5a7b-4c2d-9e8f-1a2b3c4d5e6f")
"""Fixed namespace of run ids; changing it would make every handler run everything again."""


BUSY_BACKOFF = 0.02
"""Seconds of the first wait after a Busy answer; each further one doubles it, with jitter."""
BUSY_MAX_BACKOFF = 1.0
"""Longest wait after a Busy answer: a burst spreads over the handler's capacity without idling it."""

MAX_PARAMS_SIZE = 64 * 1024
"""Bytes of JSON a Schedule's params may take, as the CRD documents: every run sends them."""


def check_params(params: Any) -> None:
    """InvalidSchedule unless ``params`` is a JSON object every run can send as it is.

    Checked when the Schedule is applied, so a value the wire cannot carry is a
    schema error at once rather than a failure at each run.
    """
    if params is None:
        return
    if not isinstance(params, dict):
        raise InvalidSchedule(f"spec.params must be an object, not {type(params).__name__}")
    try:
        protocol.check_json(params, "spec.params")
    except TypeError as error:
        raise InvalidSchedule(str(error)) from None
    try:
        size = len(json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError:
        raise InvalidSchedule("spec.params holds text that is not valid Unicode (a lone surrogate)") from None
    if size > MAX_PARAMS_SIZE:
        raise InvalidSchedule(f"spec.params is {size} bytes of JSON, more than the {MAX_PARAMS_SIZE} allowed")


def run_id(schedule_uid: str, nominal: datetime.datetime) -> uuid.UUID:
    return uuid.uuid5(RUN_NAMESPACE, f"{schedule_uid}/{status.rfc3339(nominal)}")


def manual_run_id(schedule_uid: str, token: str) -> uuid.UUID:
    return uuid.uuid5(RUN_NAMESPACE, f"{schedule_uid}/run-now/{token}")


def jitter(run: uuid.UUID, *, max_seconds: float, room: float | None) -> float:
    """The run's delay: random but the same every time the run is fired, and never past the next run."""
    if max_seconds <= 0:
        return 0.0
    bound = max_seconds if room is None else max(0.0, min(max_seconds, room))
    return random.Random(run.bytes).uniform(0.0, bound)


class Fenced(Exception):
    """An attempt was due but this replica can no longer prove it owns the run's Schedule: not sent.

    Raised just before a send, after whatever the run waited for (its jitter, a backoff, a Busy
    handler, the Handler to appear): a replica paused or cut off during that wait has lost its
    shard to a new owner, which runs the Schedule from then on.
    """


def _always() -> bool:
    return True


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CallPlan:
    """What to call for a run, resolved from the Schedule and its Handler when the run starts."""

    route: Callable[[bytes], str | None]
    """Where an attempt of the run (by run id) goes now: the Handler's endpoint, or with replicas the pod
    its ranking picks; None while the Handler does not exist; Unavailable when it has no ready replica."""
    exists: Callable[[], bool]
    """Whether the Handler exists now."""
    handler_until: float
    """Until when (``time.monotonic``) a run waits for a missing Handler before failing (HandlerNotFound)
    without a call: the operator's start-up grace, as watches deliver Schedules and Handlers in no fixed order."""
    handler: str
    method: str
    params: dict[str, Any]
    timeout: float
    retry: client_.RetryPolicy
    owns: Callable[[], bool] = _always
    """Whether this replica owns the Schedule now: asked immediately before every send of every attempt."""
    sender: str | None = None
    """This replica's identity, sent in every call's header for the handler's log and journal."""


@dataclasses.dataclass
class Run:
    """A run in flight."""

    id: uuid.UUID
    schedule: str
    nominal: datetime.datetime
    retry_until: datetime.datetime | None
    """No attempt starts at or after this time (the next run's), unless concurrency is Allow."""
    delay: float = 0.0
    attempt: int = 0
    start_time: datetime.datetime | None = None
    task: asyncio.Task[status.RunRecord | None] | None = None
    interrupted: str | None = None
    """Why the engine stopped the run unfinished: it stays in ``active`` and runs again on resumption."""
    cancelled: str | None = None
    """Why the engine cancelled the run (a newer run replaced it, a backfill was called off): its record's message."""
    trigger: str = "schedule"
    """What started it: its schedule, ``run-now`` or ``backfill``."""
    resent: bool = False
    """A run a previous owner left in flight, sent again under its run id (the header says so)."""
    owed: bool = False
    """A run the Schedule owes (a catch-up's under catchUpPolicy All, a backfill's): a time that comes due
    while it is active waits its turn rather than being skipped or replacing it."""

    def render(self) -> dict[str, Any]:
        rendered: dict[str, Any] = {"runId": str(self.id), "scheduledTime": status.rfc3339(self.nominal)}
        if self.start_time is not None:
            rendered["startTime"] = status.rfc3339(self.start_time)
        if self.attempt:
            rendered["attempt"] = self.attempt
        if self.interrupted is not None:
            rendered["interrupted"] = self.interrupted
        if self.trigger != "schedule":
            rendered["trigger"] = self.trigger
        return rendered


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def execute(
    run: Run,
    plan: CallPlan,
    *,
    client: client_.Client,
    metrics: OperatorMetrics,
    on_attempt: Callable[[], None] | None = None,
) -> status.RunRecord:
    """Runs the attempts and returns the record, whatever happens on the way.

    Cancellation yields a Cancelled record (``run.cancelled`` says why), also
    while the run still waits for its first attempt; an interrupted run (the
    engine stopping) propagates the cancellation and stays unrecorded, as does
    a fenced one (``Fenced``: its Schedule's new owner runs it). Any other
    exception fails the run with a record that names it: no error on a run's
    path may leave the run active for good.
    """
    record = status.RunRecord(
        run_id=str(run.id),
        scheduled_time=run.nominal,
        outcome=status.Outcome.FAILED,
        trigger=run.trigger,
    )
    try:
        if run.delay:
            await asyncio.sleep(run.delay)
        record.start_time = run.start_time = _now()
        metrics.fire_lateness.observe(max(0.0, (run.start_time - run.nominal).total_seconds() - run.delay))
        await _attempts(run, plan, record, client=client, metrics=metrics, on_attempt=on_attempt)
    except asyncio.CancelledError:
        if run.interrupted is not None:
            raise
        record.outcome = status.Outcome.CANCELLED
        record.error = {"type": "Cancelled", "message": run.cancelled or "cancelled"}
    except Fenced:
        raise
    except Exception as error:
        log.exception("run %s of %s failed unexpectedly", run.id, run.schedule)
        record.outcome = status.Outcome.FAILED
        record.error = {"type": "InternalError", "message": f"{type(error).__name__}: {error}"[:1024]}
    record.finish_time = _now()
    record.attempts = run.attempt
    return record


async def _attempts(
    run: Run,
    plan: CallPlan,
    record: status.RunRecord,
    *,
    client: client_.Client,
    metrics: OperatorMetrics,
    on_attempt: Callable[[], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    if not await _handler_seen(plan):
        record.error = {"type": "HandlerNotFound", "message": f"Handler {plan.handler!r} does not exist"}
        return
    rng: random.Random | None = None  # seeded by the run id on a first failure: the same jitter on every fire
    nominal = status.rfc3339(run.nominal)
    # A handler at its limit of calls in flight answers Busy without running the call: the run backs off
    # and tries again, for as long as the method's own timeout, and such refusals do not use up attempts.
    busy, busy_until = 0, loop.time() + plan.timeout
    while True:
        if not plan.owns():  # fencing at the last moment: after every wait, before every send
            raise Fenced(f"run {run.id} of {run.schedule}: its shard is no longer provably owned")
        run.attempt += 1
        if on_attempt is not None:
            on_attempt()
        call = protocol.Call(
            call_id=run.id.bytes,
            method=plan.method,
            params=plan.params,
            timeout_ms=max(1, int(plan.timeout * 1000)),
            attempt=run.attempt,
            schedule=run.schedule,
            scheduled_time=nominal,
            sender=plan.sender,
            resent=run.resent,
        )
        started = loop.time()
        try:
            record.endpoint = endpoint = _endpoint(plan, run)
            value = await client.attempt(endpoint, call)
        except errors.CallError as error:
            metrics.series(metrics.rpc_calls, plan.handler, error.type).inc()
            metrics.series(metrics.rpc_duration, plan.handler).observe(loop.time() - started)
            record.outcome = status.Outcome.TIMED_OUT if error.type == "DeadlineExceeded" else status.Outcome.FAILED
            record.error = {"type": error.type, "message": error.message[:1024]}
            rng = rng or random.Random(run.id.bytes)
            if error.type == "Busy" and loop.time() < busy_until:
                busy += 1
                delay = rng.uniform(0.5, 1.0) * min(BUSY_MAX_BACKOFF, BUSY_BACKOFF * 2 ** min(busy, 16))
            elif not error.retryable or run.attempt - busy >= plan.retry.max_attempts:
                return
            else:
                delay = plan.retry.delay(run.attempt - busy, rng)
            if run.retry_until is not None and _now() + datetime.timedelta(seconds=delay) >= run.retry_until:
                record.error["message"] += " (no retry: the next run is due)"
                return
            await asyncio.sleep(delay)
            continue
        metrics.series(metrics.rpc_calls, plan.handler, "OK").inc()
        metrics.series(metrics.rpc_duration, plan.handler).observe(loop.time() - started)
        record.outcome = status.Outcome.SUCCEEDED
        record.error = None
        record.result = status.cut_result(value)
        return


async def _handler_seen(plan: CallPlan, poll: float = 0.1) -> bool:
    """Whether the Handler exists, waiting until ``handler_until``: just after a start, the watches may
    deliver a Schedule before its Handler."""
    if plan.exists():
        return True
    for _ in range(math.ceil((plan.handler_until - time.monotonic()) / poll)):
        await asyncio.sleep(poll)
        if plan.exists():
            return True
    return False


def _endpoint(plan: CallPlan, run: Run) -> str:
    endpoint = plan.route(run.id.bytes)
    if endpoint is None:  # deleted since the run started: fails this attempt, which may be retried
        raise errors.Unavailable(f"Handler {plan.handler!r} has no ready replica (or was deleted)")
    return endpoint
