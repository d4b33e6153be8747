"""When a Schedule fires: cron, ``@every`` and one-shot triggers on APScheduler's BaseTrigger.

APScheduler is only the in-process timer; these classes decide the times. All
of them work on aware datetimes and return UTC.

Daylight-saving changes follow Vixie cron's rule (docs/time.md). A cron schedule
whose hour field is a wildcard follows the wall clock as it occurs: an hour
skipped in spring does not exist, an hour repeated in autumn runs again. A
schedule at fixed hours runs each nominal time exactly once: times that fall
into a gap run together at the first instant after it, times in a repeated
hour only at their first occurrence.
"""

from __future__ import annotations

import abc
import bisect
import datetime
import re
import zoneinfo
from collections.abc import Mapping
from typing import Any

from apscheduler.triggers.base import BaseTrigger

from schedulezero_operator import cron, zones
from schedulezero_operator.errors import InvalidSchedule

UTC = datetime.UTC
KNOWN_ZONES = frozenset(zones.NAMES)
"""The time zones a Schedule may name: those the CRD lists (see zones.py)."""
_TICK = datetime.timedelta(microseconds=1)
_MAX_DAYS = 366 * 9
"""How far a cron search looks ahead: "29 Feb" may be 8 years away (2096 -> 2104)."""


class Trigger(BaseTrigger, abc.ABC):  # type: ignore[misc]  # APScheduler 3 is untyped
    """A trigger with an optional [start, end] window, defined by its next time after an instant."""

    def __init__(self, *, start: datetime.datetime | None = None, end: datetime.datetime | None = None) -> None:
        self.start = start
        self.end = end

    @abc.abstractmethod
    def _next_after(self, after: datetime.datetime) -> datetime.datetime | None:
        """The first fire time strictly after ``after``, ignoring the window."""

    def next_after(self, after: datetime.datetime) -> datetime.datetime | None:
        """The first fire time strictly after ``after`` within the window."""
        if self.start is not None and after < self.start:
            after = self.start - _TICK
        found = self._next_after(after.astimezone(UTC))
        if found is None or (self.end is not None and found > self.end):
            return None
        return found

    def get_next_fire_time(
        self, previous_fire_time: datetime.datetime | None, now: datetime.datetime
    ) -> datetime.datetime | None:
        """APScheduler's interface: strictly after the previous time, or at/after ``now`` for the first."""
        if previous_fire_time is not None:
            return self.next_after(previous_fire_time)
        return self.next_after(now - _TICK)


class CronTrigger(Trigger):
    def __init__(
        self,
        expression: str,
        *,
        timezone: zoneinfo.ZoneInfo,
        start: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
    ) -> None:
        super().__init__(start=start, end=end)
        self.spec = cron.parse(expression)
        self.timezone = timezone

    def __repr__(self) -> str:
        return f"CronTrigger({self.spec.expression!r}, timezone={self.timezone.key!r})"

    def _next_after(self, after: datetime.datetime) -> datetime.datetime | None:
        day = after.astimezone(self.timezone).date()
        for _ in range(_MAX_DAYS):
            if day.month not in self.spec.months:
                day = (day.replace(day=1) + datetime.timedelta(days=32)).replace(day=1)
                continue
            if self.spec.day_matches(day):
                found = self._first_on(day, after)
                if found is not None:
                    return found
            day += datetime.timedelta(days=1)
        return None

    def _first_on(self, day: datetime.date, after: datetime.datetime) -> datetime.datetime | None:
        midnight = datetime.datetime.combine(day, datetime.time(), tzinfo=self.timezone)
        offset = midnight.utcoffset()
        if offset == (midnight + datetime.timedelta(days=1)).utcoffset():
            return self._first_on_plain_day(day, after, offset)
        return self._first_on_transition_day(day, after)

    def _first_on_plain_day(
        self, day: datetime.date, after: datetime.datetime, offset: datetime.timedelta | None
    ) -> datetime.datetime | None:
        """No offset change on this day: wall time and instant map one to one."""
        assert offset is not None
        floor = (after + offset).replace(tzinfo=None)  # the wall time of ``after``
        hours, minutes = self.spec.hours, self.spec.minutes
        first_hour = bisect.bisect_left(hours, floor.hour) if floor.date() == day else 0
        for hour in hours[first_hour:]:
            if floor.date() == day and hour == floor.hour:
                index = bisect.bisect_right(minutes, floor.minute)  # h:m:00 <= floor when m == floor.minute
                if index == len(minutes):
                    continue
                minute = minutes[index]
            else:
                minute = minutes[0]
            wall = datetime.datetime.combine(day, datetime.time(hour, minute))
            return (wall - offset).replace(tzinfo=UTC)
        return None

    def _first_on_transition_day(self, day: datetime.date, after: datetime.datetime) -> datetime.datetime | None:
        candidates = []
        for hour in self.spec.hours:
            for minute in self.spec.minutes:
                for instant in self._instants(datetime.datetime.combine(day, datetime.time(hour, minute))):
                    if instant > after:
                        candidates.append(instant)
        return min(candidates, default=None)

    def _instants(self, wall: datetime.datetime) -> list[datetime.datetime]:
        """The instants at which a nominal wall time runs, per the DST policy."""
        first = wall.replace(tzinfo=self.timezone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.timezone, fold=1).astimezone(UTC)
        exists = first.astimezone(self.timezone).replace(tzinfo=None) == wall
        if not exists:  # in a gap
            return [] if self.spec.hour_wildcard else [self._gap_end(second, first)]
        if first != second and self.spec.hour_wildcard:  # repeated: it occurs twice
            return [first, second]
        return [first]

    def _gap_end(self, before: datetime.datetime, after: datetime.datetime) -> datetime.datetime:
        """The first instant after a gap, which lies between the two readings of a skipped wall time."""
        offset_before = before.astimezone(self.timezone).utcoffset()
        low, high = before, after
        while high - low > datetime.timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(self.timezone).utcoffset() == offset_before:
                low = middle
            else:
                high = middle
        return high.replace(microsecond=0)


class EveryTrigger(Trigger):
    """``@every <interval>``: the grid anchor + k·interval, in elapsed time, whatever the wall clock does."""

    def __init__(
        self,
        interval: datetime.timedelta,
        *,
        anchor: datetime.datetime,
        include_anchor: bool,
        start: datetime.datetime | None = None,
        end: datetime.datetime | None = None,
    ) -> None:
        super().__init__(start=start, end=end)
        self.interval = interval
        self.anchor = anchor.astimezone(UTC)
        self.include_anchor = include_anchor

    def __repr__(self) -> str:
        return f"EveryTrigger({self.interval}, anchor={self.anchor.isoformat()})"

    def _next_after(self, after: datetime.datetime) -> datetime.datetime:
        first = self.anchor if self.include_anchor else self.anchor + self.interval
        if after < first:
            return first
        steps = (after - self.anchor) // self.interval + 1
        return self.anchor + steps * self.interval


class RunAtTrigger(Trigger):
    """Once, at a given instant."""

    def __init__(
        self, at: datetime.datetime, *, start: datetime.datetime | None = None, end: datetime.datetime | None = None
    ) -> None:
        super().__init__(start=start, end=end)
        self.at = at.astimezone(UTC)

    def __repr__(self) -> str:
        return f"RunAtTrigger({self.at.isoformat()})"

    def _next_after(self, after: datetime.datetime) -> datetime.datetime | None:
        return self.at if self.at > after else None


_DURATION_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
MAX_DURATION_NS = 2**63 - 1
"""The longest duration Go (and so the API server's check of a Schedule) can hold: about 292 years."""
RFC3339 = re.compile(
    r"([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-[0-9]{2}-[0-9]{2}"
    r"T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)


def parse_every(text: str) -> datetime.timedelta:
    """``@every 1h30m`` -> 90 minutes; Go duration syntax, at least one second.

    Counted in whole nanoseconds as Go does (a fraction below a nanosecond is
    dropped), so that the API server's check and this one agree to the last one.
    """
    duration = text.strip(cron.BLANKS).removeprefix("@every").strip(cron.BLANKS)
    if not duration or _DURATION_PART.sub("", duration):
        raise InvalidSchedule(f"schedule {text!r}: {duration!r} is not a duration such as 90s, 5m or 1h30m")
    nanoseconds = 0
    for whole, fraction, unit in _DURATION_PART.findall(duration):
        scale = _UNIT_NS[unit]
        nanoseconds += int(whole) * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
    if nanoseconds < 10**9:
        raise InvalidSchedule(f"schedule {text!r}: the interval must be at least 1s")
    if nanoseconds > MAX_DURATION_NS:
        raise InvalidSchedule(f"schedule {text!r}: the interval must be at most 2562047h (about 292 years)")
    return datetime.timedelta(microseconds=nanoseconds // 1000)


def parse_time(value: Any, field: str) -> datetime.datetime:
    """An RFC 3339 time with its offset; InvalidSchedule naming ``field`` otherwise."""
    if isinstance(value, datetime.datetime):
        parsed = value
    else:
        try:
            if not RFC3339.fullmatch(str(value)):
                raise ValueError("not RFC 3339")
            parsed = datetime.datetime.fromisoformat(str(value))
        except ValueError:
            raise InvalidSchedule(f"{field} {value!r} is not an RFC 3339 time such as 2026-12-24T18:00:00Z") from None
    if parsed.tzinfo is None:
        raise InvalidSchedule(f"{field} {value!r} needs a UTC offset, such as Z or +01:00")
    return parsed.astimezone(UTC)


def _exact(parsed: datetime.datetime, value: Any) -> tuple[datetime.datetime, int]:
    """``parsed`` and the nanoseconds its text held below the microsecond, which ``datetime`` drops.

    The API server compares times to the nanosecond (and drops digits below
    it): an endTime 100 ns after startTime is after it there, so it is here.
    """
    match = RFC3339.fullmatch(value) if isinstance(value, str) else None
    digits = (match[2] or ".")[1:] if match else ""  # the fraction's digits
    return parsed, int(digits[6:9].ljust(3, "0"))


def parse_timezone(name: Any) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or name not in KNOWN_ZONES:  # the zones the CRD's rule lists, no others
        raise InvalidSchedule(f"timeZone {name!r} is not a known IANA time zone, such as Europe/Berlin")
    try:
        return zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"timeZone {name!r} is not a known IANA time zone, such as Europe/Berlin") from None


def build_trigger(spec: Mapping[str, Any], *, created: datetime.datetime) -> Trigger:
    """The trigger a Schedule spec describes; InvalidSchedule names what is wrong."""
    schedule, run_at = spec.get("schedule"), spec.get("runAt")
    if (schedule is None) == (run_at is None):
        raise InvalidSchedule("exactly one of spec.schedule and spec.runAt must be set")
    start = parse_time(spec["startTime"], "startTime") if spec.get("startTime") is not None else None
    end = parse_time(spec["endTime"], "endTime") if spec.get("endTime") is not None else None
    if start is not None and end is not None and _exact(end, spec["endTime"]) <= _exact(start, spec["startTime"]):
        raise InvalidSchedule("endTime must be after startTime")
    zone = parse_timezone(spec.get("timeZone") or "UTC")  # checked whatever the schedule, as the API server does
    if run_at is not None:
        return RunAtTrigger(parse_time(run_at, "runAt"), start=start, end=end)
    text = str(schedule).strip(cron.BLANKS)
    if text.startswith("@every") and text.isascii():
        interval = parse_every(text)
        anchor = start if start is not None else created
        return EveryTrigger(interval, anchor=anchor, include_anchor=start is not None, start=start, end=end)
    return CronTrigger(text, timezone=zone, start=start, end=end)


def fire_times(
    trigger: Trigger, after: datetime.datetime, until: datetime.datetime, limit: int = 1000
) -> list[datetime.datetime]:
    """Nominal times t with after < t <= until, the earliest ``limit`` of them."""
    times: list[datetime.datetime] = []
    current = trigger.next_after(after)
    while current is not None and current <= until and len(times) < limit:
        times.append(current)
        current = trigger.next_after(current)
    return times
