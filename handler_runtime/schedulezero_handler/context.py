"""What a method can learn about the call it is serving.

A scheduled method often needs its run's nominal time (to process "the day
that ended at 06:00", not "the day that ended when the call arrived") or its
attempt number; ``current_call()`` gives them without changing its signature.
"""

from __future__ import annotations

import contextvars
import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class CallInfo:
    call_id: str
    """The call id in hex; for a scheduled run, the run id."""
    method: str
    attempt: int
    schedule: str | None
    """``namespace/name`` of the Schedule, for scheduled runs."""
    scheduled_time: str | None
    """Nominal time of the run (RFC 3339, UTC), for scheduled runs."""


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("schedulezero_call", default=None)


def current_call() -> CallInfo | None:
    """The call being served, inside an exposed method (sync or async); None elsewhere."""
    return _current.get()


def set_current(info: CallInfo) -> None:
    _current.set(info)
