"""A handler's delivery journal (``schedulezero handler --journal FILE``), read back and judged.

Executions cannot show a double fire: a handler answers a second delivery of a
run id from its reply cache, or joins it to the call still running, without
running the method again. The journal records every delivery with its
sender, attempt and whether it was a re-send, so exactly once is judged
where it happens.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib


@dataclasses.dataclass(frozen=True)
class Delivery:
    at: float
    call: str
    method: str
    attempt: int
    sender: str | None
    resent: bool
    schedule: str | None
    scheduled: str | None
    answer: str
    """``run``, ``cached``, ``joined``, or ``refused:<error type>``."""


def read(path: pathlib.Path) -> list[Delivery]:
    """Every delivery journalled so far, in order; a line still being written is left out."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        found.append(Delivery(**entry))
    return found


def by_run(deliveries: list[Delivery], *, prefix: str = "") -> dict[tuple[str, str], list[Delivery]]:
    """Deliveries of each run, as (Schedule, nominal time), for the Schedules named ``prefix...``."""
    runs: dict[tuple[str, str], list[Delivery]] = collections.defaultdict(list)
    for delivery in deliveries:
        if delivery.schedule and delivery.scheduled and delivery.schedule.startswith(prefix):
            runs[delivery.schedule, delivery.scheduled].append(delivery)
    return dict(runs)


def double_fired(runs: dict[tuple[str, str], list[Delivery]]) -> dict[tuple[str, str], list[Delivery]]:
    """The runs delivered more than once beyond what exactly once allows.

    Allowed: retries (one sender, attempts rising) and the documented re-send
    of a run a previous owner left in flight (``resent``), which comes after
    every delivery of the previous owner. Everything else is a double fire:
    the same attempt sent twice, two replicas each firing the run, or an old
    owner sending after the new owner's re-send.
    """
    doubled = {}
    for run, sent in runs.items():
        attempts = collections.Counter((d.sender, d.attempt, d.resent) for d in sent)
        firing = {d.sender for d in sent if not d.resent}
        first_resend = min((d.at for d in sent if d.resent), default=None)
        late = first_resend is not None and any(not d.resent and d.at > first_resend for d in sent)
        if max(attempts.values()) > 1 or len(firing) > 1 or late:
            doubled[run] = sent
    return doubled
