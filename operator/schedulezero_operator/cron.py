"""The cron dialect of Kubernetes CronJob (robfig/cron v3, ``ParseStandard``).

Users bring CronJob schedules with them, so the same expression must mean the
same times here. APScheduler's own ``CronTrigger.from_crontab`` would not: it
counts day-of-week from Monday and always AND-s the two day fields.

- five fields: minute hour day-of-month month day-of-week;
- each a list of ``*``/``?``, ``N``, ``N-M``, each optionally ``/step``;
  ``N/step`` runs from N to the field's maximum (day-of-week's is 6);
- names ``JAN``-``DEC`` and ``SUN``-``SAT`` in any case; Sunday is 0 or 7;
- a day field is unrestricted only when written ``*`` or ``?`` (``/1`` at most);
  when both day fields are restricted a day matches if either does.
"""

from __future__ import annotations

import dataclasses
import datetime

from schedulezero_operator.errors import InvalidSchedule

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = {
    name: i + 1
    for i, name in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])
}
_WEEKDAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = dataclasses.field(default_factory=dict)
    high_alias: int | None = None
    """A value accepted beyond ``high`` and folded onto ``low`` (7 for Sunday)."""


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 6, _WEEKDAYS, high_alias=7),
)


@dataclasses.dataclass(frozen=True)
class CronSpec:
    """A parsed expression: the matching values of each field."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 is Sunday."""
    days_unrestricted: bool
    weekdays_unrestricted: bool
    hour_wildcard: bool
    """The hour field starts with ``*`` or ``?``: it follows the wall clock as it occurs across DST changes."""

    def day_matches(self, day: datetime.date) -> bool:
        in_month = day.day in self.days
        in_week = day.isoweekday() % 7 in self.weekdays
        if self.days_unrestricted or self.weekdays_unrestricted:
            return in_month and in_week
        return in_month or in_week


def parse(expression: str) -> CronSpec:
    """Parses a 5-field expression or a macro; InvalidSchedule names the bad part."""
    text = expression.strip()
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise InvalidSchedule(f"schedule {expression!r}: set the time zone in spec.timeZone, not in the expression")
    if text.startswith("@"):
        macro = MACROS.get(text.lower())
        if macro is None:
            known = ", ".join([*MACROS, "@every <duration>"])
            raise InvalidSchedule(f"schedule {expression!r}: unknown macro {text!r} (known: {known})")
        text = macro
    parts = text.split()
    if len(parts) != 5:
        raise InvalidSchedule(
            f"schedule {expression!r}: expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    parsed = [_parse_field(expression, part, field) for part, field in zip(parts, _FIELDS, strict=True)]
    (minutes, _), (hours, _), (days, days_star), (months, _), (weekdays, weekdays_star) = parsed
    return CronSpec(
        expression=expression,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(weekdays),
        days_unrestricted=days_star,
        weekdays_unrestricted=weekdays_star,
        hour_wildcard=parts[1].startswith(("*", "?")),
    )


def _parse_field(expression: str, text: str, field: _Field) -> tuple[set[int], bool]:
    """The values a field matches, and whether it is unrestricted (``*`` or ``?``, step 1)."""
    values: set[int] = set()
    unrestricted = False
    for part in text.split(","):
        try:
            part_values, part_star = _parse_range(part, field)
        except ValueError as error:
            raise InvalidSchedule(f"schedule {expression!r}: {field.name} field {part!r}: {error}") from None
        values |= part_values
        unrestricted |= part_star
    return values, unrestricted


def _parse_range(text: str, field: _Field) -> tuple[set[int], bool]:
    range_text, slash, step_text = text.partition("/")
    bounds = range_text.split("-")
    star = False
    if bounds[0] in ("*", "?"):
        if len(bounds) != 1:
            raise ValueError("a wildcard cannot start a range")
        start, end, star = field.low, field.high, True
    elif len(bounds) in (1, 2):
        start = _value(bounds[0], field)
        end = _value(bounds[1], field) if len(bounds) == 2 else start
    else:
        raise ValueError("a range has one '-'")
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"step {step_text!r} must be a positive integer")
        step = int(step_text)
        if len(bounds) == 1 and not star:
            end = field.high  # N/step: from N through the field's maximum
        star = star and step == 1
    else:
        step = 1
    if start > end:
        raise ValueError(f"range start {start} is after its end {end}")
    values = set(range(start, end + 1, step))
    if field.high_alias is not None and field.high_alias in values:
        values = (values - {field.high_alias}) | {field.low}
    return values, star


def _value(text: str, field: _Field) -> int:
    named = field.names.get(text.lower())
    if named is not None:
        return named
    if not text.isdigit():
        known = f" or a name ({', '.join(n.upper() for n in field.names)})" if field.names else ""
        raise ValueError(f"{text!r} is not a number{known}")
    value = int(text)
    high = field.high_alias if field.high_alias is not None else field.high
    if not field.low <= value <= high:
        raise ValueError(f"{value} is outside {field.low}-{high}")
    return value
