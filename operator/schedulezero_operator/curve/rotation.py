"""When a Handler's issued key pair rotates, and which pair and port its callers use meanwhile.

A rotation has three steps, each written to the Handler's Secret, and each
taken by the replica that owns the Handler only once the pods serve what the
Secret says (``listeners.py`` in the runtime says how a handler follows it):

- **begin**: a next pair beside the current one. Pods serve it on their port
  + 1 as well; every caller moves there once it has checked that they do.
- **promote**, once every pod has served it for ``overlap`` seconds: the next
  pair becomes the current one too. Pods bind their port again with it, which
  only drops connections of callers that did not move (or calls sent before
  the move that are still running after ``overlap``); callers move back once
  the port answers with it.
- **finish**, once the port has served it for ``overlap`` seconds: the next
  pair goes, and port + 1 closes.

So no caller ever meets a listener whose key it does not hold: a rotation
costs no call. The decisions here are pure; ``issuer.py`` reads and writes.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re

ROTATE_ANNOTATION = "schedulezero.io/rotate-keys"
"""On a Handler: a new value (``kubectl schedulezero rotate-keys`` writes a timestamp) asks for a rotation."""
REQUEST_ANNOTATION = "schedulezero.io/rotation-request"
"""On the Handler's Secret: the request the last rotation was begun for, so each is acted on once."""
SINCE_ANNOTATION = "schedulezero.io/keys-since"
"""On the Handler's Secret: when it last changed step (or was issued), for the overlap and ``rotationInterval``."""

Pair = tuple[bytes, bytes]

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_interval(text: str) -> datetime.timedelta:
    """``spec.rotationInterval`` (``720h``, ``90m``, ``1h30m``, ``45s``); ValueError naming it otherwise."""
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"rotationInterval {text!r} is not a duration such as 720h, 90m or 1h30m")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    interval = datetime.timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if interval < datetime.timedelta(minutes=1):
        raise ValueError(f"rotationInterval {text!r} is shorter than a minute")
    return interval


class Phase(enum.Enum):
    STEADY = "steady"
    """One pair, on the port."""
    OVERLAP = "overlap"
    """The current pair on the port, the next on port + 1."""
    PROMOTED = "promoted"
    """The next pair on both (once the pods have followed)."""


class Step(enum.Enum):
    NONE = "none"
    BEGIN = "begin"
    PROMOTE = "promote"
    FINISH = "finish"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Keys:
    """What a Handler's Secret holds."""

    server: Pair
    next: Pair | None = None
    since: datetime.datetime | None = None
    handled: str | None = None

    @property
    def phase(self) -> Phase:
        if self.next is None:
            return Phase.STEADY
        return Phase.PROMOTED if self.next == self.server else Phase.OVERLAP


def call_with(keys: Keys, *, next_served: bool, main_served: bool) -> tuple[Pair, bool]:
    """The server pair to call with, and whether at port + 1: the newest pair the pods are known to serve."""
    if keys.phase is Phase.OVERLAP and next_served and keys.next is not None:
        return keys.next, True
    if keys.phase is Phase.PROMOTED and not main_served:
        return keys.server, True
    return keys.server, False


def step(
    keys: Keys,
    *,
    now: datetime.datetime,
    request: str | None,
    interval: datetime.timedelta | None,
    overlap: datetime.timedelta,
    served_for: datetime.timedelta | None,
) -> Step:
    """The step the owner takes now, if any. ``served_for``: how long the pods have been seen serving what
    the phase asks of them (the next pair on port + 1, or the promoted pair on the port), so that callers have
    moved and the calls they sent before have ended."""
    if keys.phase is Phase.STEADY:
        requested = request is not None and request != keys.handled
        due = interval is not None and (keys.since is None or now - keys.since >= interval)
        return Step.BEGIN if requested or due else Step.NONE
    if served_for is None or served_for < overlap:
        return Step.NONE
    return Step.PROMOTE if keys.phase is Phase.OVERLAP else Step.FINISH
