"""APScheduler as the engine's timer, handing due jobs over in one piece.

APScheduler's own wake-up (``BaseScheduler._process_jobs``) does, for every
due job before it returns to the event loop, the job's bookkeeping: its due
times, an executor look-up, a submission event, its next time, and moving it
in the job store. With thousands of Schedules due at one instant that is
about 15 µs a job before the first run can start. Here the wake-up only
collects the due jobs and passes them on. The engine advances each job as it
comes to it, batch by batch (``advance``: its due times and its next time), so
the first runs' calls go out while the last jobs still wait, and moves them
all in the job store once the burst's calls are out (``settle``).

What APScheduler decides stays as it was: the due times are the job's own
(``Job._get_run_times``, every time from its next run time up to the
wake-up), coalesced if the job says so, its next time is its trigger's after
the last of them, and a job with no time left is removed. Misfire grace is
not applied here, as the engine's jobs have none (``misfire_grace_time``
None): whether a late time is still run is the engine's to judge, by the
Schedule's ``startingDeadlineSeconds``. While due jobs are being handed out
the timer does not wake again (it would see them still due); ``resume``
rearms it once the engine has settled them all.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_RUNNING

TIMEOUT_MAX = 86_400 * 365.0
"""The longest wait the timer arms (APScheduler caps it at threading's TIMEOUT_MAX, far beyond)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Due:
    """A job the timer found due, and the wake-up that found it."""

    job: Any
    """APScheduler's Job, as it was in the job store at the wake-up."""
    store: str
    now: datetime.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Advanced:
    """What ``Timer.advance`` did with a due job."""

    run_times: list[datetime.datetime]
    """The nominal times due at the wake-up, oldest first (empty: none was left)."""
    following: datetime.datetime | None
    """The job's next time after them, by its trigger (None: it has none left)."""
    current: bool = dataclasses.field(kw_only=True)
    """Whether the job was still the one in the job store: False when its Schedule was changed or removed
    since the wake-up."""


class Timer(AsyncIOScheduler):  # type: ignore[misc]  # APScheduler 3 is untyped
    """An ``AsyncIOScheduler`` whose wake-up passes the due jobs to ``on_due`` instead of submitting each."""

    def __init__(self, *, on_due: Callable[[list[Due]], None], **options: Any) -> None:
        super().__init__(**options)
        self._on_due = on_due
        self._handing_out = False

    def _process_jobs(self) -> float | None:
        if self.state != STATE_RUNNING or self._handing_out:  # paused, stopped, or due jobs still handed out
            return None
        now = datetime.datetime.now(self.timezone)
        due: list[Due] = []
        next_wakeup: datetime.datetime | None = None
        with self._jobstores_lock:
            for alias, store in self._jobstores.items():
                due += (Due(job, alias, now) for job in store.get_due_jobs(now))
                upcoming = store.get_next_run_time()
                if upcoming is not None and (next_wakeup is None or upcoming < next_wakeup):
                    next_wakeup = upcoming
        if due:
            self._handing_out = True
            self._on_due(due)
            return None
        if next_wakeup is None:
            return None
        return min(max(next_wakeup.timestamp() - datetime.datetime.now(self.timezone).timestamp(), 0.0), TIMEOUT_MAX)

    def advance(self, due: Due) -> Advanced:
        """The times of the job that were due at the wake-up, and its next time after them.

        The job store is not touched yet (``settle`` does that, once the burst's calls are out), so this
        is the cheap part of APScheduler's bookkeeping: the job's triggers, no job-store moves.
        """
        job = due.job
        # APScheduler's Job._get_run_times, keeping the first time after them: the job's next time (coalesced
        # or not, the time after the last one due), which APScheduler would ask the trigger for once more.
        run_times: list[datetime.datetime] = []
        following: datetime.datetime | None = job.next_run_time
        while following is not None and following <= due.now:
            run_times.append(following)
            following = job.trigger.get_next_fire_time(following, due.now)
        if run_times and job.coalesce:
            run_times = run_times[-1:]
        if not run_times:
            return Advanced([], job.next_run_time, current=False)
        store = self._jobstores.get(due.store)
        current = store is not None and store.lookup_job(job.id) is job
        return Advanced(run_times, following, current=current)

    def settle(self, due: Due, advanced: Advanced) -> None:
        """Moves the job in its store to its next time, or removes it when it has none.

        A job replaced or removed since the wake-up (its Schedule changed or went away) is left as the
        change made it.
        """
        if not advanced.run_times:
            return
        job = due.job
        with self._jobstores_lock:
            store = self._jobstores.get(due.store)
            if store is None or store.lookup_job(job.id) is not job:
                return
            if advanced.following is not None:
                job._modify(next_run_time=advanced.following)
                store.update_job(job)
            else:
                self.remove_job(job.id, due.store)

    def discard(self, due: Due) -> None:
        """Removes the job, unless it was replaced or removed since the wake-up."""
        with self._jobstores_lock:
            store = self._jobstores.get(due.store)
            if store is not None and store.lookup_job(due.job.id) is due.job:
                self.remove_job(due.job.id, due.store)

    def resume(self) -> None:
        """Every job handed out has been advanced and settled: the timer wakes again at the next time due."""
        self._handing_out = False
        if self.running:
            self.wakeup()
