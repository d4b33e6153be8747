"""Schedule triggers: the cron dialect, @every, runAt, windows and DST (docs/time.md).

Every expected value below was worked out by hand from the calendar and the zone
rules, not by running a cron library. Calendar facts used throughout:

- 2026-01-01 is a Thursday, so 2026 starts its months on: Feb 1 Sun, Mar 1 Sun,
  Apr 1 Wed, May 1 Fri, Jun 1 Mon, Jul 1 Wed, Aug 1 Sat, Sep 1 Tue, Oct 1 Thu,
  Nov 1 Sun, Dec 1 Tue; 2027-01-01 is a Friday, 2028-01-01 a Saturday.
- Zone transitions in 2026 (checked with zoneinfo):
  America/New_York     spring 03-08 07:00Z (02:00 EST -> 03:00 EDT), fall 11-01 06:00Z (02:00 EDT -> 01:00 EST)
  Europe/Berlin        spring 03-29 01:00Z (02:00 CET -> 03:00 CEST), fall 10-25 01:00Z (03:00 CEST -> 02:00 CET)
  Australia/Lord_Howe  fall   04-04 15:00Z (Apr 5 02:00 +11:00 -> 01:30 +10:30, so 01:30-01:59 repeats)
                       spring 10-03 15:30Z (Oct 4 02:00 +10:30 -> 02:30 +11:00, so 02:00-02:29 is skipped)
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pytest

from schedulezero_operator import triggers

UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
CREATED = dt.datetime(2026, 4, 1, 10, 0, 7, tzinfo=dt.UTC)


class Trigger(Protocol):
    def get_next_fire_time(self, previous_fire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime | None: ...


def utc(text: str) -> dt.datetime:
    """'2026-03-08 07:00' (or with seconds / microseconds) as an aware UTC datetime."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def show(moment: dt.datetime) -> str:
    """An instant as UTC text, so a failing comparison reads like the tables."""
    return moment.astimezone(dt.UTC).isoformat(sep=" ")


def nexts(trigger: Trigger, start: dt.datetime, n: int) -> list[dt.datetime]:
    """The next n fire times strictly after start, by chaining get_next_fire_time (fewer if it runs out)."""
    times: list[dt.datetime] = []
    previous = start
    for _ in range(n):
        following = trigger.get_next_fire_time(previous, previous)
        if following is None:
            break
        assert following.utcoffset() == dt.timedelta(0), f"{following!r} is not in UTC"
        times.append(following)
        previous = following
    return times


def assert_fires(trigger: Trigger, start: str, expected: list[str]) -> None:
    """The fire times after start are exactly `expected`, through both get_next_fire_time and fire_times."""
    wanted = [show(utc(text)) for text in expected]
    assert [show(t) for t in nexts(trigger, utc(start), len(expected))] == wanted
    listed = triggers.fire_times(trigger, utc(start), utc(expected[-1]))
    assert [show(t) for t in listed] == wanted


def cron(expression: str, zone: ZoneInfo = UTC_ZONE, **window: dt.datetime) -> triggers.CronTrigger:
    return triggers.CronTrigger(expression, timezone=zone, **window)


def test_invalid_schedule_is_a_value_error() -> None:
    assert issubclass(triggers.InvalidSchedule, ValueError)


# --- the cron dialect (all in UTC, so no DST) ------------------------------------------------------------------

DIALECT = [
    # Both day fields restricted: a day matches if EITHER matches.
    pytest.param(
        "0 0 13 * FRI",
        "2026-04-01 00:00",
        # Fridays in April 2026 are 3, 10, 17, 24; April 13 is a Monday; May 1 is a Friday.
        [
            "2026-04-03 00:00",
            "2026-04-10 00:00",
            "2026-04-13 00:00",
            "2026-04-17 00:00",
            "2026-04-24 00:00",
            "2026-05-01 00:00",
        ],
        id="dom-and-dow-restricted-is-or",
    ),
    pytest.param(
        "0 0 1-7 * MON",
        "2026-05-31 12:00",
        # The classic trap: not "the first Monday" but days 1-7 OR any Monday (June 1 2026 is a Monday).
        [
            "2026-06-01 00:00",
            "2026-06-02 00:00",
            "2026-06-03 00:00",
            "2026-06-04 00:00",
            "2026-06-05 00:00",
            "2026-06-06 00:00",
            "2026-06-07 00:00",
            "2026-06-08 00:00",
            "2026-06-15 00:00",
        ],
        id="dom-range-and-dow-is-or",
    ),
    # One day field '*': both must match, i.e. only the restricted one counts.
    pytest.param(
        "0 0 * * FRI",
        "2026-04-01 00:00",
        ["2026-04-03 00:00", "2026-04-10 00:00", "2026-04-17 00:00"],
        id="dow-only-is-and",
    ),
    pytest.param(
        "0 0 13 * *",
        "2026-04-01 00:00",
        ["2026-04-13 00:00", "2026-05-13 00:00", "2026-06-13 00:00"],
        id="dom-only-is-and",
    ),
    pytest.param(
        "0 0 1-7 * *",
        "2026-05-31 12:00",
        [
            "2026-06-01 00:00",
            "2026-06-02 00:00",
            "2026-06-03 00:00",
            "2026-06-04 00:00",
            "2026-06-05 00:00",
            "2026-06-06 00:00",
            "2026-06-07 00:00",
            "2026-07-01 00:00",
        ],
        id="dom-range-only-is-and",
    ),
    # '*/2' is restricted (odd days 1,3,...,31), so with MON it is an OR.
    pytest.param(
        "0 0 */2 * MON",
        "2026-06-01 00:00",
        # Odd days 3,5,7,9,11,13,15,17 plus Mondays 8 and 15 (June 1 2026 is a Monday).
        [
            "2026-06-03 00:00",
            "2026-06-05 00:00",
            "2026-06-07 00:00",
            "2026-06-08 00:00",
            "2026-06-09 00:00",
            "2026-06-11 00:00",
            "2026-06-13 00:00",
            "2026-06-15 00:00",
            "2026-06-17 00:00",
        ],
        id="star-step-dom-counts-as-restricted",
    ),
    # '*/1' is still unrestricted (docs/time.md: '*' or '?' with no step or '/1'), so this is Mondays only.
    pytest.param(
        "0 0 */1 * MON",
        "2026-06-01 00:00",
        ["2026-06-08 00:00", "2026-06-15 00:00", "2026-06-22 00:00"],
        id="star-step-1-dom-is-unrestricted",
    ),
    # '?' is '*'.
    pytest.param(
        "0 0 ? * FRI",
        "2026-04-01 00:00",
        ["2026-04-03 00:00", "2026-04-10 00:00", "2026-04-17 00:00"],
        id="question-mark-dom",
    ),
    pytest.param(
        "0 0 13 * ?",
        "2026-04-01 00:00",
        ["2026-04-13 00:00", "2026-05-13 00:00", "2026-06-13 00:00"],
        id="question-mark-dow",
    ),
    # Sunday is 0 and 7 (Sundays in April 2026: 5, 12, 19).
    pytest.param(
        "0 0 * * 0", "2026-04-01 00:00", ["2026-04-05 00:00", "2026-04-12 00:00", "2026-04-19 00:00"], id="sunday-as-0"
    ),
    pytest.param(
        "0 0 * * 7", "2026-04-01 00:00", ["2026-04-05 00:00", "2026-04-12 00:00", "2026-04-19 00:00"], id="sunday-as-7"
    ),
    pytest.param(
        "0 0 * * SUN",
        "2026-04-01 00:00",
        ["2026-04-05 00:00", "2026-04-12 00:00", "2026-04-19 00:00"],
        id="sunday-by-name",
    ),
    pytest.param(
        "0 0 * * 5-7",
        "2026-04-01 00:00",
        # Fri 3, Sat 4, Sun 5, Fri 10, Sat 11, Sun 12.
        [
            "2026-04-03 00:00",
            "2026-04-04 00:00",
            "2026-04-05 00:00",
            "2026-04-10 00:00",
            "2026-04-11 00:00",
            "2026-04-12 00:00",
        ],
        id="dow-range-ending-at-7",
    ),
    pytest.param(
        "0 0 * * 6,7",
        "2026-04-01 00:00",
        ["2026-04-04 00:00", "2026-04-05 00:00", "2026-04-11 00:00"],
        id="dow-list-with-7",
    ),
    # Names, any case.
    pytest.param(
        "0 0 1 jan,Mar *",
        "2026-01-15 00:00",
        ["2026-03-01 00:00", "2027-01-01 00:00", "2027-03-01 00:00"],
        id="month-names-mixed-case",
    ),
    pytest.param(
        "0 0 1 Jun-aug *",
        "2026-01-01 00:00",
        ["2026-06-01 00:00", "2026-07-01 00:00", "2026-08-01 00:00", "2027-06-01 00:00"],
        id="month-name-range",
    ),
    pytest.param(
        "0 9 * * MON-fri",
        "2026-04-02 12:00",
        # April 2 2026 is a Thursday (after 09:00): Fri 3, then Mon 6 to Fri 10.
        [
            "2026-04-03 09:00",
            "2026-04-06 09:00",
            "2026-04-07 09:00",
            "2026-04-08 09:00",
            "2026-04-09 09:00",
            "2026-04-10 09:00",
        ],
        id="dow-name-range-mixed-case",
    ),
    pytest.param(
        "0 0 * * sun,Sat",
        "2026-04-01 00:00",
        ["2026-04-04 00:00", "2026-04-05 00:00", "2026-04-11 00:00"],
        id="dow-name-list",
    ),
    # Steps, ranges with steps, lists.
    pytest.param(
        "*/15 * * * *",
        "2026-04-01 10:07",
        ["2026-04-01 10:15", "2026-04-01 10:30", "2026-04-01 10:45", "2026-04-01 11:00"],
        id="minute-star-step",
    ),
    pytest.param(
        "5/20 * * * *",
        "2026-04-01 10:00",
        # 5/20 = 5 through 59 step 20 = 5, 25, 45.
        ["2026-04-01 10:05", "2026-04-01 10:25", "2026-04-01 10:45", "2026-04-01 11:05"],
        id="minute-n-slash-step",
    ),
    pytest.param(
        "10-30/10 * * * *",
        "2026-04-01 10:00",
        ["2026-04-01 10:10", "2026-04-01 10:20", "2026-04-01 10:30", "2026-04-01 11:10"],
        id="minute-range-step",
    ),
    pytest.param(
        "0,30 * * * *",
        "2026-04-01 10:00",
        ["2026-04-01 10:30", "2026-04-01 11:00", "2026-04-01 11:30"],
        id="minute-list",
    ),
    pytest.param("* * * * *", "2026-04-01 10:00:30", ["2026-04-01 10:01", "2026-04-01 10:02"], id="every-minute"),
    pytest.param(
        "0 */6 * * *",
        "2026-04-01 00:00",
        ["2026-04-01 06:00", "2026-04-01 12:00", "2026-04-01 18:00", "2026-04-02 00:00"],
        id="hour-star-step",
    ),
    pytest.param(
        "0 9-17/4 * * *",
        "2026-04-01 00:00",
        ["2026-04-01 09:00", "2026-04-01 13:00", "2026-04-01 17:00", "2026-04-02 09:00"],
        id="hour-range-step",
    ),
    pytest.param(
        "0 0 1/10 * *",
        "2026-04-01 00:00",
        # 1/10 = 1, 11, 21, 31; April has no 31st.
        [
            "2026-04-11 00:00",
            "2026-04-21 00:00",
            "2026-05-01 00:00",
            "2026-05-11 00:00",
            "2026-05-21 00:00",
            "2026-05-31 00:00",
        ],
        id="dom-n-slash-step-runs-to-31",
    ),
    pytest.param(
        "0 0 1 */3 *",
        "2026-02-01 00:00",
        ["2026-04-01 00:00", "2026-07-01 00:00", "2026-10-01 00:00", "2027-01-01 00:00"],
        id="month-star-step",
    ),
    pytest.param(
        "0 0 * * 1/2",
        "2026-04-01 00:00",
        # 1/2 in day-of-week runs to 6, not 7: Mon, Wed, Fri, and Sunday April 5 is NOT included.
        ["2026-04-03 00:00", "2026-04-06 00:00", "2026-04-08 00:00", "2026-04-10 00:00", "2026-04-13 00:00"],
        id="dow-n-slash-step-max-is-6",
    ),
    pytest.param(
        "0 0 * * */2",
        "2026-04-01 00:00",
        # 0,2,4,6 = Sun, Tue, Thu, Sat: Thu 2, Sat 4, Sun 5, Tue 7.
        ["2026-04-02 00:00", "2026-04-04 00:00", "2026-04-05 00:00", "2026-04-07 00:00"],
        id="dow-star-step",
    ),
    pytest.param("59 23 31 12 *", "2026-06-01 00:00", ["2026-12-31 23:59", "2027-12-31 23:59"], id="year-end"),
]


@pytest.mark.parametrize(("expression", "start", "expected"), DIALECT)
def test_cron_dialect(expression: str, start: str, expected: list[str]) -> None:
    assert_fires(cron(expression), start, expected)


MACROS = [
    pytest.param("@yearly", "0 0 1 1 *", "2026-04-01 00:00", ["2027-01-01 00:00", "2028-01-01 00:00"], id="yearly"),
    pytest.param("@annually", "0 0 1 1 *", "2026-04-01 00:00", ["2027-01-01 00:00", "2028-01-01 00:00"], id="annually"),
    pytest.param("@monthly", "0 0 1 * *", "2026-04-01 00:00", ["2026-05-01 00:00", "2026-06-01 00:00"], id="monthly"),
    pytest.param("@weekly", "0 0 * * 0", "2026-04-01 00:00", ["2026-04-05 00:00", "2026-04-12 00:00"], id="weekly"),
    pytest.param("@daily", "0 0 * * *", "2026-04-01 00:00", ["2026-04-02 00:00", "2026-04-03 00:00"], id="daily"),
    pytest.param("@midnight", "0 0 * * *", "2026-04-01 00:00", ["2026-04-02 00:00", "2026-04-03 00:00"], id="midnight"),
    pytest.param("@hourly", "0 * * * *", "2026-04-01 00:00", ["2026-04-01 01:00", "2026-04-01 02:00"], id="hourly"),
]


@pytest.mark.parametrize(("macro", "fields", "start", "expected"), MACROS)
def test_macros_mean_their_five_fields(macro: str, fields: str, start: str, expected: list[str]) -> None:
    assert_fires(triggers.build_trigger({"schedule": macro}, created=CREATED), start, expected)
    assert_fires(triggers.build_trigger({"schedule": fields}, created=CREATED), start, expected)


# --- month ends and 29 February ---------------------------------------------------------------------------------

CALENDAR = [
    pytest.param("0 12 29 2 *", "2025-03-01 00:00", ["2028-02-29 12:00", "2032-02-29 12:00"], id="leap-day"),
    # 2100 is not a leap year (divisible by 100, not by 400), so after 2096 the next 29 February is in 2104.
    pytest.param("0 0 29 2 *", "2096-03-01 00:00", ["2104-02-29 00:00"], id="leap-day-skips-2100"),
    pytest.param(
        "0 0 29 2 MON",
        "2027-02-01 00:00",
        # OR: 29 February or any Monday in February. Feb 1 2027 is a Monday (Mondays 8, 15, 22 follow); Feb 1 2028
        # is a Tuesday, so its Mondays are 7, 14, 21, 28, and Feb 29 2028 (a Tuesday) matches by day of month.
        [
            "2027-02-08 00:00",
            "2027-02-15 00:00",
            "2027-02-22 00:00",
            "2028-02-07 00:00",
            "2028-02-14 00:00",
            "2028-02-21 00:00",
            "2028-02-28 00:00",
            "2028-02-29 00:00",
        ],
        id="leap-day-or-mondays",
    ),
    pytest.param(
        "0 0 31 * *",
        "2026-01-01 00:00",
        [
            "2026-01-31 00:00",
            "2026-03-31 00:00",
            "2026-05-31 00:00",
            "2026-07-31 00:00",
            "2026-08-31 00:00",
            "2026-10-31 00:00",
            "2026-12-31 00:00",
        ],
        id="31st-skips-short-months",
    ),
    pytest.param(
        "0 0 30 * *",
        "2026-01-01 00:00",
        ["2026-01-30 00:00", "2026-03-30 00:00", "2026-04-30 00:00", "2026-05-30 00:00"],
        id="30th-skips-february",
    ),
    pytest.param(
        "0 0 29 * *", "2026-01-01 00:00", ["2026-01-29 00:00", "2026-03-29 00:00"], id="29th-skips-february-2026"
    ),
    pytest.param(
        "0 0 29 * *",
        "2028-01-01 00:00",
        ["2028-01-29 00:00", "2028-02-29 00:00", "2028-03-29 00:00"],
        id="29th-in-leap-2028",
    ),
]


@pytest.mark.parametrize(("expression", "start", "expected"), CALENDAR)
def test_calendar_edges(expression: str, start: str, expected: list[str]) -> None:
    assert_fires(cron(expression), start, expected)


@pytest.mark.timeout(30)
def test_a_date_that_never_exists_has_no_fire_time() -> None:
    # 30 February: valid syntax (Kubernetes accepts it), but there is never a further fire time.
    trigger = cron("0 0 30 2 *")
    assert trigger.get_next_fire_time(None, utc("2026-01-01 00:00")) is None
    assert triggers.fire_times(trigger, utc("2026-01-01 00:00"), utc("2036-01-01 00:00")) == []


# --- DST (Vixie cron's rule, docs/time.md) ------------------------------------------------------------------------
# Hour field starting with '*': the wall clock as it occurs (skipped hour: nothing; repeated hour: runs again).
# Fixed hours: each nominal time once; skipped times run together at the first instant after the gap; repeated times
# only in their first occurrence. Comments give the local wall-clock time of each expected UTC instant.

DST = [
    # America/New_York, spring forward 2026-03-08 07:00Z (02:00 EST -> 03:00 EDT).
    pytest.param(
        "30 2 * * *",
        NEW_YORK,
        "2026-03-07 00:00",
        [
            "2026-03-07 07:30",  # 02:30 EST
            "2026-03-08 07:00",  # 02:30 does not exist: 03:00 EDT, the first instant after the gap
            "2026-03-09 06:30",  # 02:30 EDT
        ],
        id="new-york-spring-fixed",
    ),
    pytest.param(
        "0,30 2 * * *",
        NEW_YORK,
        "2026-03-07 00:00",
        [
            "2026-03-07 07:00",  # 02:00 EST
            "2026-03-07 07:30",  # 02:30 EST
            "2026-03-08 07:00",  # 02:00 and 02:30 both skipped: ONE run at 03:00 EDT
            "2026-03-09 06:00",  # 02:00 EDT
            "2026-03-09 06:30",  # 02:30 EDT
        ],
        id="new-york-spring-fixed-two-times-in-gap-run-once",
    ),
    pytest.param(
        "*/15 2 * * *",
        NEW_YORK,
        "2026-03-08 06:00",
        # The hour field is fixed (only the minute is '*'), so the fixed-hour rule applies: 02:00-02:45 -> 03:00.
        [
            "2026-03-08 07:00",  # one run at 03:00 EDT for all four skipped times
            "2026-03-09 06:00",  # 02:00 EDT
            "2026-03-09 06:15",  # 02:15 EDT
        ],
        id="new-york-spring-fixed-hour-minute-step",
    ),
    pytest.param(
        "0 2,3 * * *",
        NEW_YORK,
        "2026-03-08 00:00",
        [
            "2026-03-08 07:00",  # 02:00 (skipped, moved to 03:00 EDT) and 03:00 EDT are the same instant: one run
            "2026-03-09 06:00",  # 02:00 EDT
            "2026-03-09 07:00",  # 03:00 EDT
        ],
        id="new-york-spring-never-two-runs-per-instant",
    ),
    pytest.param(
        "30 * * * *",
        NEW_YORK,
        "2026-03-08 05:00",
        [
            "2026-03-08 05:30",  # 00:30 EST
            "2026-03-08 06:30",  # 01:30 EST
            "2026-03-08 07:30",  # 03:30 EDT (02:30 does not exist, so no run for it)
            "2026-03-08 08:30",  # 04:30 EDT
        ],
        id="new-york-spring-wildcard",
    ),
    pytest.param(
        "0 */2 * * *",
        NEW_YORK,
        "2026-03-08 04:30",
        [
            "2026-03-08 05:00",  # 00:00 EST
            "2026-03-08 08:00",  # 04:00 EDT (02:00 does not exist)
            "2026-03-08 10:00",  # 06:00 EDT
        ],
        id="new-york-spring-wildcard-step",
    ),
    # America/New_York, fall back 2026-11-01 06:00Z (02:00 EDT -> 01:00 EST; 01:00-01:59 repeats).
    pytest.param(
        "30 1 * * *",
        NEW_YORK,
        "2026-10-31 00:00",
        [
            "2026-10-31 05:30",  # 01:30 EDT
            "2026-11-01 05:30",  # 01:30 EDT, the first occurrence; 01:30 EST (06:30Z) does not run
            "2026-11-02 06:30",  # 01:30 EST
        ],
        id="new-york-fall-fixed",
    ),
    pytest.param(
        "30 1 * * *",
        NEW_YORK,
        "2026-11-01 05:45",  # 01:45 EDT: the second 01:30 still ahead is a repeat, not a fire time
        ["2026-11-02 06:30"],  # 01:30 EST the next day
        id="new-york-fall-fixed-from-inside-repeat",
    ),
    pytest.param(
        "*/30 1 * * *",
        NEW_YORK,
        "2026-11-01 04:00",
        [
            "2026-11-01 05:00",  # 01:00 EDT
            "2026-11-01 05:30",  # 01:30 EDT (not again at 06:00Z / 06:30Z, the EST repeat)
            "2026-11-02 06:00",  # 01:00 EST
        ],
        id="new-york-fall-fixed-hour-minute-step",
    ),
    pytest.param(
        "30 0-3 * * *",
        NEW_YORK,
        "2026-11-01 04:00",
        # "0-3" is a fixed-hour field (it does not start with '*'), unlike the '*' case below.
        [
            "2026-11-01 04:30",  # 00:30 EDT
            "2026-11-01 05:30",  # 01:30 EDT (no second run at 01:30 EST)
            "2026-11-01 07:30",  # 02:30 EST
            "2026-11-01 08:30",  # 03:30 EST
        ],
        id="new-york-fall-fixed-hour-range",
    ),
    pytest.param(
        "30 * * * *",
        NEW_YORK,
        "2026-11-01 04:00",
        [
            "2026-11-01 04:30",  # 00:30 EDT
            "2026-11-01 05:30",  # 01:30 EDT
            "2026-11-01 06:30",  # 01:30 EST: the repeated hour runs again
            "2026-11-01 07:30",  # 02:30 EST
        ],
        id="new-york-fall-wildcard",
    ),
    pytest.param(
        "0 * * * *",
        NEW_YORK,
        "2026-11-01 03:30",
        [
            "2026-11-01 04:00",  # 00:00 EDT
            "2026-11-01 05:00",  # 01:00 EDT
            "2026-11-01 06:00",  # 01:00 EST
            "2026-11-01 07:00",  # 02:00 EST
        ],
        id="new-york-fall-hourly",
    ),
    pytest.param(
        "0 */2 * * *",
        NEW_YORK,
        "2026-11-01 03:30",
        [
            "2026-11-01 04:00",  # 00:00 EDT
            "2026-11-01 07:00",  # 02:00 EST (hour 1 is odd, so the repeat does not matter)
            "2026-11-01 09:00",  # 04:00 EST
        ],
        id="new-york-fall-wildcard-step",
    ),
    # Europe/Berlin, spring forward 2026-03-29 01:00Z (02:00 CET -> 03:00 CEST).
    pytest.param(
        "30 2 * * *",
        BERLIN,
        "2026-03-28 00:00",
        [
            "2026-03-28 01:30",  # 02:30 CET
            "2026-03-29 01:00",  # 02:30 does not exist: 03:00 CEST
            "2026-03-30 00:30",  # 02:30 CEST
        ],
        id="berlin-spring-fixed",
    ),
    pytest.param(
        "15 2 * * SUN",
        BERLIN,
        "2026-03-20 00:00",
        # Sundays: March 22, March 29 (the transition day), April 5.
        [
            "2026-03-22 01:15",  # 02:15 CET
            "2026-03-29 01:00",  # 02:15 does not exist: 03:00 CEST
            "2026-04-05 00:15",  # 02:15 CEST
        ],
        id="berlin-spring-fixed-weekly",
    ),
    pytest.param(
        "0 2,3 * * *",
        BERLIN,
        "2026-03-29 00:00",
        [
            "2026-03-29 01:00",  # 02:00 (skipped -> 03:00 CEST) and 03:00 CEST: the same instant, one run
            "2026-03-30 00:00",  # 02:00 CEST
            "2026-03-30 01:00",  # 03:00 CEST
        ],
        id="berlin-spring-never-two-runs-per-instant",
    ),
    pytest.param(
        "30 * * * *",
        BERLIN,
        "2026-03-28 23:00",
        [
            "2026-03-28 23:30",  # 00:30 CET
            "2026-03-29 00:30",  # 01:30 CET
            "2026-03-29 01:30",  # 03:30 CEST (no 02:30)
            "2026-03-29 02:30",  # 04:30 CEST
        ],
        id="berlin-spring-wildcard",
    ),
    pytest.param(
        "0 */2 * * *",
        BERLIN,
        "2026-03-28 22:30",
        [
            "2026-03-28 23:00",  # 00:00 CET
            "2026-03-29 02:00",  # 04:00 CEST (02:00 does not exist)
            "2026-03-29 04:00",  # 06:00 CEST
        ],
        id="berlin-spring-wildcard-step",
    ),
    # Europe/Berlin, fall back 2026-10-25 01:00Z (03:00 CEST -> 02:00 CET; 02:00-02:59 repeats).
    pytest.param(
        "30 2 * * *",
        BERLIN,
        "2026-10-24 00:00",
        [
            "2026-10-24 00:30",  # 02:30 CEST
            "2026-10-25 00:30",  # 02:30 CEST, first occurrence only (not 01:30Z = 02:30 CET)
            "2026-10-26 01:30",  # 02:30 CET
        ],
        id="berlin-fall-fixed",
    ),
    pytest.param(
        "30 2 * * *",
        BERLIN,
        "2026-10-25 00:45",  # 02:45 CEST: the 02:30 CET ahead is a repeat, not a fire time
        ["2026-10-26 01:30"],  # 02:30 CET the next day
        id="berlin-fall-fixed-from-inside-repeat",
    ),
    pytest.param(
        "0 0-6/2 * * *",
        BERLIN,
        "2026-10-24 21:00",
        # Hours 0,2,4,6 written as a range: fixed hours, so 02:00 runs once.
        [
            "2026-10-24 22:00",  # 00:00 CEST
            "2026-10-25 00:00",  # 02:00 CEST (not again at 02:00 CET)
            "2026-10-25 03:00",  # 04:00 CET
            "2026-10-25 05:00",  # 06:00 CET
        ],
        id="berlin-fall-fixed-hour-range-step",
    ),
    pytest.param(
        "0 */2 * * *",
        BERLIN,
        "2026-10-24 21:00",
        # The same hours written with '*': the repeated 02:00 runs again.
        [
            "2026-10-24 22:00",  # 00:00 CEST
            "2026-10-25 00:00",  # 02:00 CEST
            "2026-10-25 01:00",  # 02:00 CET
            "2026-10-25 03:00",  # 04:00 CET
        ],
        id="berlin-fall-wildcard-step",
    ),
    pytest.param(
        "30 * * * *",
        BERLIN,
        "2026-10-24 23:00",
        [
            "2026-10-24 23:30",  # 01:30 CEST
            "2026-10-25 00:30",  # 02:30 CEST
            "2026-10-25 01:30",  # 02:30 CET
            "2026-10-25 02:30",  # 03:30 CET
        ],
        id="berlin-fall-wildcard",
    ),
    # Australia/Lord_Howe, DST ends 2026-04-04 15:00Z (Apr 5 02:00 +11:00 -> 01:30 +10:30; 01:30-01:59 repeats).
    pytest.param(
        "45 1 * * *",
        LORD_HOWE,
        "2026-04-03 12:00",
        [
            "2026-04-03 14:45",  # Apr 4 01:45 +11:00
            "2026-04-04 14:45",  # Apr 5 01:45 +11:00, first occurrence (not 15:15Z = 01:45 +10:30)
            "2026-04-05 15:15",  # Apr 6 01:45 +10:30
        ],
        id="lord-howe-fall-fixed",
    ),
    pytest.param(
        "15,45 1 * * *",
        LORD_HOWE,
        "2026-04-04 14:00",
        [
            "2026-04-04 14:15",  # Apr 5 01:15 +11:00 (01:15 is before the repeated half hour: occurs once anyway)
            "2026-04-04 14:45",  # Apr 5 01:45 +11:00 (its repeat at 15:15Z does not run)
            "2026-04-05 14:45",  # Apr 6 01:15 +10:30
            "2026-04-05 15:15",  # Apr 6 01:45 +10:30
        ],
        id="lord-howe-fall-fixed-partly-repeated-hour",
    ),
    pytest.param(
        "45 * * * *",
        LORD_HOWE,
        "2026-04-04 13:00",
        [
            "2026-04-04 13:45",  # 00:45 +11:00
            "2026-04-04 14:45",  # 01:45 +11:00
            "2026-04-04 15:15",  # 01:45 +10:30: the repeated half hour runs again (30 minutes later)
            "2026-04-04 16:15",  # 02:45 +10:30
        ],
        id="lord-howe-fall-wildcard-in-repeat",
    ),
    pytest.param(
        "15 * * * *",
        LORD_HOWE,
        "2026-04-04 13:00",
        [
            "2026-04-04 13:15",  # 00:15 +11:00
            "2026-04-04 14:15",  # 01:15 +11:00 (01:15 is not repeated: 01:15 +10:30 would be before the change)
            "2026-04-04 15:45",  # 02:15 +10:30 (90 minutes later)
            "2026-04-04 16:45",  # 03:15 +10:30
        ],
        id="lord-howe-fall-wildcard-outside-repeat",
    ),
    # Australia/Lord_Howe, DST starts 2026-10-03 15:30Z (Oct 4 02:00 +10:30 -> 02:30 +11:00; 02:00-02:29 skipped).
    pytest.param(
        "15 2 * * *",
        LORD_HOWE,
        "2026-10-02 12:00",
        [
            "2026-10-02 15:45",  # Oct 3 02:15 +10:30
            "2026-10-03 15:30",  # Oct 4 02:15 does not exist: 02:30 +11:00, the first instant after the gap
            "2026-10-04 15:15",  # Oct 5 02:15 +11:00
        ],
        id="lord-howe-spring-fixed",
    ),
    pytest.param(
        "0,15,45 2 * * *",
        LORD_HOWE,
        "2026-10-03 12:00",
        [
            "2026-10-03 15:30",  # Oct 4 02:00 and 02:15 skipped: one run at 02:30 +11:00
            "2026-10-03 15:45",  # Oct 4 02:45 +11:00 exists
            "2026-10-04 15:00",  # Oct 5 02:00 +11:00
        ],
        id="lord-howe-spring-fixed-half-hour-gap",
    ),
    pytest.param(
        "15,30 2 * * *",
        LORD_HOWE,
        "2026-10-03 12:00",
        [
            "2026-10-03 15:30",  # Oct 4 02:15 (moved to 02:30 +11:00) and 02:30 +11:00 itself: one run
            "2026-10-04 15:15",  # Oct 5 02:15 +11:00
            "2026-10-04 15:30",  # Oct 5 02:30 +11:00
        ],
        id="lord-howe-spring-never-two-runs-per-instant",
    ),
    pytest.param(
        "15 * * * *",
        LORD_HOWE,
        "2026-10-03 14:00",
        [
            "2026-10-03 14:45",  # Oct 4 01:15 +10:30
            "2026-10-03 16:15",  # 03:15 +11:00 (02:15 does not exist)
            "2026-10-03 17:15",  # 04:15 +11:00
        ],
        id="lord-howe-spring-wildcard-in-gap",
    ),
    pytest.param(
        "45 * * * *",
        LORD_HOWE,
        "2026-10-03 14:00",  # Oct 4 00:30 +10:30
        [
            "2026-10-03 14:15",  # Oct 4 00:45 +10:30
            "2026-10-03 15:15",  # 01:45 +10:30
            "2026-10-03 15:45",  # 02:45 +11:00 (exists; 30 minutes later)
            "2026-10-03 16:45",  # 03:45 +11:00
        ],
        id="lord-howe-spring-wildcard-outside-gap",
    ),
]


@pytest.mark.parametrize(("expression", "zone", "start", "expected"), DST)
def test_dst(expression: str, zone: ZoneInfo, start: str, expected: list[str]) -> None:
    assert_fires(cron(expression, zone), start, expected)


# --- build_trigger: zones, macros, @every anchoring, windows, runAt ----------------------------------------------

SPECS = [
    pytest.param(
        {"schedule": "0 9 * * *"},
        CREATED,
        "2026-04-01 00:00",
        ["2026-04-01 09:00", "2026-04-02 09:00"],
        id="default-zone-is-utc",
    ),
    # 09:00 CEST
    pytest.param(
        {"schedule": "0 9 * * *", "timeZone": "Europe/Berlin"},
        CREATED,
        "2026-04-01 00:00",
        ["2026-04-01 07:00", "2026-04-02 07:00"],
        id="berlin-summer",
    ),
    # 09:00 EST
    pytest.param(
        {"schedule": "0 9 * * *", "timeZone": "America/New_York"},
        CREATED,
        "2026-01-15 00:00",
        ["2026-01-15 14:00", "2026-01-16 14:00"],
        id="new-york-winter",
    ),
    pytest.param(
        {"schedule": "@hourly", "timeZone": "Europe/Berlin"},
        CREATED,
        "2026-10-24 23:30",
        # Fall back: 02:00 CEST, 02:00 CET, 03:00 CET, one hour apart in elapsed time.
        ["2026-10-25 00:00", "2026-10-25 01:00", "2026-10-25 02:00"],
        id="hourly-berlin-fall",
    ),
    pytest.param(
        {"schedule": "@hourly", "timeZone": "America/New_York"},
        CREATED,
        "2026-03-08 05:30",
        # Spring forward: 01:00 EST, 03:00 EDT, 04:00 EDT.
        ["2026-03-08 06:00", "2026-03-08 07:00", "2026-03-08 08:00"],
        id="hourly-new-york-spring",
    ),
    pytest.param(
        {"schedule": "@daily", "timeZone": "Australia/Lord_Howe"},
        CREATED,
        "2026-04-04 00:00",
        # Apr 5 00:00 +11:00; Apr 6 00:00 +10:30.
        ["2026-04-04 13:00", "2026-04-05 13:30"],
        id="daily-lord-howe-across-fall",
    ),
    # @every without startTime: anchored at creation, the creation itself is not a fire time.
    pytest.param(
        {"schedule": "@every 90s"},
        CREATED,
        "2026-04-01 10:00:07",
        ["2026-04-01 10:01:37", "2026-04-01 10:03:07", "2026-04-01 10:04:37"],
        id="every-from-created",
    ),
    pytest.param(
        {"schedule": "@every 1h30m"},
        CREATED,
        "2026-04-01 10:00:07",
        ["2026-04-01 11:30:07", "2026-04-01 13:00:07"],
        id="every-compound-duration",
    ),
    # @every with startTime: anchored there, and the anchor is a fire time.
    pytest.param(
        {"schedule": "@every 5m", "startTime": "2026-04-01T12:00:00Z"},
        CREATED,
        "2026-04-01 10:00:07",
        ["2026-04-01 12:00", "2026-04-01 12:05", "2026-04-01 12:10"],
        id="every-start-in-future",
    ),
    pytest.param(
        {"schedule": "@every 5m", "startTime": "2026-04-01T14:00:00+02:00"},
        CREATED,
        "2026-04-01 10:00:07",
        ["2026-04-01 12:00", "2026-04-01 12:05"],
        id="every-start-with-offset",
    ),
    pytest.param(
        {"schedule": "@every 1h", "timeZone": "America/New_York"},
        utc("2026-03-08 05:30"),
        "2026-03-08 05:30",
        # An interval is elapsed time; the spring-forward at 07:00Z changes nothing.
        ["2026-03-08 06:30", "2026-03-08 07:30", "2026-03-08 08:30"],
        id="every-ignores-dst",
    ),
    pytest.param(
        {"runAt": "2026-05-01T11:00:00+02:00"},
        CREATED,
        "2026-04-01 00:00",
        ["2026-05-01 09:00"],
        id="run-at-with-offset",
    ),
    pytest.param(
        {"runAt": "2026-05-01T09:00:00Z", "timeZone": "America/New_York"},
        CREATED,
        "2026-04-01 00:00",
        ["2026-05-01 09:00"],
        id="run-at-carries-its-own-offset",
    ),
]


@pytest.mark.parametrize(("spec", "created", "start", "expected"), SPECS)
def test_build_trigger(spec: dict[str, Any], created: dt.datetime, start: str, expected: list[str]) -> None:
    assert_fires(triggers.build_trigger(spec, created=created), start, expected)


WINDOWS = [
    pytest.param(
        {"schedule": "0 9 * * *", "startTime": "2026-04-10T00:00:00Z", "endTime": "2026-04-12T23:00:00Z"},
        "2026-04-01 00:00",
        "2026-05-01 00:00",
        ["2026-04-10 09:00", "2026-04-11 09:00", "2026-04-12 09:00"],
        id="cron-window",
    ),
    pytest.param(
        {
            "schedule": "0 9 * * *",
            "timeZone": "Europe/Berlin",
            "startTime": "2026-04-10T00:00:00+02:00",
            "endTime": "2026-04-12T12:00:00+02:00",
        },
        "2026-04-01 00:00",
        "2026-05-01 00:00",
        ["2026-04-10 07:00", "2026-04-11 07:00", "2026-04-12 07:00"],  # 09:00 CEST
        id="cron-window-berlin",
    ),
    pytest.param(
        {"schedule": "0 */6 * * *", "startTime": "2026-04-10T07:00:00Z"},
        "2026-04-01 00:00",
        "2026-04-11 00:00",
        ["2026-04-10 12:00", "2026-04-10 18:00", "2026-04-11 00:00"],  # nothing before 07:00 on the 10th
        id="cron-start-only",
    ),
    pytest.param(
        {"schedule": "@every 1h", "startTime": "2026-04-01T00:00:00Z", "endTime": "2026-04-01T02:30:00Z"},
        "2026-03-31 00:00",
        "2026-04-02 00:00",
        ["2026-04-01 00:00", "2026-04-01 01:00", "2026-04-01 02:00"],  # the anchor fires; the end stops it
        id="every-window",
    ),
    pytest.param(
        {"runAt": "2026-05-01T09:00:00Z"},
        "2026-04-01 00:00",
        "2026-04-30 23:59",
        [],  # nothing before its time
        id="run-at-before-its-time",
    ),
    pytest.param(
        {"runAt": "2026-05-01T09:00:00Z"},
        "2026-04-01 00:00",
        "2027-01-01 00:00",
        ["2026-05-01 09:00"],  # exactly once
        id="run-at-once",
    ),
]


@pytest.mark.parametrize(("spec", "after", "until", "expected"), WINDOWS)
def test_windows(spec: dict[str, Any], after: str, until: str, expected: list[str]) -> None:
    trigger = triggers.build_trigger(spec, created=CREATED)
    assert [show(t) for t in triggers.fire_times(trigger, utc(after), utc(until))] == [
        show(utc(text)) for text in expected
    ]
    if expected and ("endTime" in spec or "runAt" in spec):
        # Nothing after the last one: the window (or the one-shot) is over.
        assert trigger.get_next_fire_time(utc(expected[-1]), utc(expected[-1])) is None


# --- get_next_fire_time(None, now): the first fire time at or after now -------------------------------------------


def every_spec(spec: dict[str, Any], created: str) -> Callable[[], Trigger]:
    return lambda: triggers.build_trigger(spec, created=utc(created))


UPCOMING = [
    pytest.param(lambda: cron("0 * * * *"), utc("2026-04-01 10:00"), "2026-04-01 10:00", id="cron-at-now"),
    pytest.param(
        lambda: cron("0 * * * *"), utc("2026-04-01 10:00:00.000001"), "2026-04-01 11:00", id="cron-just-after-now"
    ),
    pytest.param(lambda: cron("*/15 * * * *"), utc("2026-04-01 10:07:30"), "2026-04-01 10:15", id="cron-mid-minute"),
    # 12:00:01 CEST = 10:00:01Z
    pytest.param(
        lambda: cron("0 * * * *"),
        dt.datetime(2026, 4, 1, 12, 0, 1, tzinfo=BERLIN),
        "2026-04-01 11:00",
        id="cron-now-in-another-zone",
    ),
    # 01:59:59 EST; 02:30 runs at 03:00 EDT
    pytest.param(
        lambda: cron("30 2 * * *", NEW_YORK), utc("2026-03-08 06:59:59"), "2026-03-08 07:00", id="cron-spring-gap-ahead"
    ),
    # 01:00 EST; 01:30 EST today is a repeat
    pytest.param(
        lambda: cron("30 1 * * *", NEW_YORK),
        utc("2026-11-01 06:00"),
        "2026-11-02 06:30",
        id="cron-inside-repeated-hour",
    ),
    pytest.param(
        lambda: cron("0 9 * * *", start=utc("2026-04-10 00:00")),
        utc("2026-04-01 00:00"),
        "2026-04-10 09:00",
        id="cron-start-in-future",
    ),
    pytest.param(
        lambda: cron("0 9 * * *", end=utc("2026-04-10 00:00")), utc("2026-04-10 00:00"), None, id="cron-after-end"
    ),
    # Restart: a trigger built again from the same spec and creation time stays on created + k * 90 s.
    # 13:17:00 is 3h16m53s = 11813 s after creation; 11813 / 90 = 131.3, so k = 132: 132 * 90 s = 3h18m.
    pytest.param(
        every_spec({"schedule": "@every 90s"}, "2026-04-01 10:00:07"),
        utc("2026-04-01 13:17:00"),
        "2026-04-01 13:18:07",
        id="every-after-restart",
    ),
    pytest.param(
        every_spec({"schedule": "@every 90s"}, "2026-04-01 10:00:07"),
        utc("2026-04-01 13:18:07"),
        "2026-04-01 13:18:07",
        id="every-after-restart-on-grid",
    ),
    pytest.param(
        every_spec({"schedule": "@every 90s"}, "2026-04-01 10:00:07"),
        utc("2026-04-01 10:00:07"),
        "2026-04-01 10:01:37",
        id="every-created-is-not-a-fire-time",
    ),
    # startTime in the past: grid 09:00 + k * 7 min; 10:00:07 is 60m07s in, 60/7 = 8.6, so k = 9: 09:63 = 10:03.
    pytest.param(
        every_spec({"schedule": "@every 7m", "startTime": "2026-04-01T09:00:00Z"}, "2026-04-01 08:00"),
        utc("2026-04-01 10:00:07"),
        "2026-04-01 10:03",
        id="every-start-in-past",
    ),
    pytest.param(
        every_spec({"schedule": "@every 7m", "startTime": "2026-04-01T09:00:00Z"}, "2026-04-01 08:00"),
        utc("2026-04-01 08:30"),
        "2026-04-01 09:00",
        id="every-start-in-future-is-a-fire-time",
    ),
    pytest.param(
        lambda: triggers.EveryTrigger(dt.timedelta(minutes=10), anchor=utc("2026-04-01 10:00"), include_anchor=True),
        utc("2026-04-01 10:00"),
        "2026-04-01 10:00",
        id="every-include-anchor",
    ),
    pytest.param(
        lambda: triggers.EveryTrigger(dt.timedelta(minutes=10), anchor=utc("2026-04-01 10:00"), include_anchor=False),
        utc("2026-04-01 10:00"),
        "2026-04-01 10:10",
        id="every-exclude-anchor",
    ),
    pytest.param(
        lambda: triggers.EveryTrigger(dt.timedelta(minutes=10), anchor=utc("2026-04-01 10:00"), include_anchor=False),
        utc("2026-04-01 09:00"),
        "2026-04-01 10:10",
        id="every-exclude-anchor-before-anchor",
    ),
    pytest.param(
        lambda: triggers.EveryTrigger(
            dt.timedelta(minutes=10),
            anchor=utc("2026-04-01 10:00"),
            include_anchor=False,
            start=utc("2026-04-01 10:25"),
        ),
        utc("2026-04-01 09:00"),
        "2026-04-01 10:30",
        id="every-start-filters-the-grid",  # grid stays 10:00 + k*10m
    ),
    pytest.param(
        lambda: triggers.EveryTrigger(
            dt.timedelta(hours=1),
            anchor=utc("2026-04-01 00:00"),
            include_anchor=True,
            end=utc("2026-04-01 02:30"),
        ),
        utc("2026-04-01 02:00:01"),
        None,
        id="every-after-end",
    ),
    pytest.param(
        lambda: triggers.RunAtTrigger(utc("2026-05-01 09:00")),
        utc("2026-04-01 00:00"),
        "2026-05-01 09:00",
        id="run-at-ahead",
    ),
    pytest.param(
        lambda: triggers.RunAtTrigger(utc("2026-05-01 09:00")),
        utc("2026-05-01 09:00"),
        "2026-05-01 09:00",
        id="run-at-now",
    ),
    pytest.param(
        lambda: triggers.RunAtTrigger(utc("2026-05-01 09:00")),
        utc("2026-05-01 09:00:00.000001"),
        None,
        id="run-at-past",
    ),
    # 11:00 CEST
    pytest.param(
        lambda: triggers.RunAtTrigger(dt.datetime(2026, 5, 1, 11, tzinfo=BERLIN)),
        utc("2026-04-01 00:00"),
        "2026-05-01 09:00",
        id="run-at-in-another-zone",
    ),
]


@pytest.mark.parametrize(("make", "now", "expected"), UPCOMING)
def test_next_fire_time_from_now(make: Callable[[], Trigger], now: dt.datetime, expected: str | None) -> None:
    following = make().get_next_fire_time(None, now)
    if expected is None:
        assert following is None
    else:
        assert following is not None
        assert following.utcoffset() == dt.timedelta(0), f"{following!r} is not in UTC"
        assert show(following) == show(utc(expected))


def test_run_at_fires_once() -> None:
    at = utc("2026-05-01 09:00")
    trigger = triggers.RunAtTrigger(at)
    assert trigger.get_next_fire_time(None, utc("2026-04-01 00:00")) == at
    assert trigger.get_next_fire_time(at, at) is None
    assert trigger.get_next_fire_time(at, utc("2027-01-01 00:00")) is None


def test_every_keeps_its_grid_across_restarts() -> None:
    spec = {"schedule": "@every 90s"}
    created = utc("2026-04-01 10:00:07")
    before = triggers.build_trigger(dict(spec), created=created)
    after = triggers.build_trigger(dict(spec), created=created)
    now = utc("2026-04-01 13:17:00")
    assert (
        nexts(after, now, 3)
        == nexts(before, now, 3)
        == [
            utc("2026-04-01 13:18:07"),
            utc("2026-04-01 13:19:37"),
            utc("2026-04-01 13:21:07"),
        ]
    )
    for moment in nexts(after, now, 3):
        assert (moment - created) % dt.timedelta(seconds=90) == dt.timedelta(0)


# --- fire_times: after < t <= until, earliest first, at most `limit` ----------------------------------------------

FIRE_TIMES = [
    pytest.param(
        lambda: cron("0 * * * *"),
        "2026-04-01 10:00",
        "2026-04-01 13:00",
        1000,
        ["2026-04-01 11:00", "2026-04-01 12:00", "2026-04-01 13:00"],
        id="after-exclusive-until-inclusive",
    ),
    pytest.param(
        lambda: cron("0 * * * *"),
        "2026-04-01 10:00",
        "2026-04-01 13:00",
        2,
        ["2026-04-01 11:00", "2026-04-01 12:00"],
        id="limit-keeps-the-earliest",
    ),
    pytest.param(lambda: cron("0 * * * *"), "2026-04-01 10:00", "2026-04-01 10:00", 1000, [], id="empty-range"),
    pytest.param(lambda: cron("0 * * * *"), "2026-04-01 10:00", "2026-04-01 10:59:59", 1000, [], id="nothing-due"),
    # 01:30 EST at 06:30Z is the repeat
    pytest.param(
        lambda: cron("30 1 * * *", NEW_YORK),
        "2026-11-01 05:45",
        "2026-11-01 07:00",
        1000,
        [],
        id="repeat-of-fixed-time-is-not-a-fire-time",
    ),
    # after is exclusive
    pytest.param(
        lambda: cron("0,30 2 * * *", NEW_YORK),
        "2026-03-08 07:00",
        "2026-03-09 06:00",
        1000,
        ["2026-03-09 06:00"],
        id="gap-run-is-at-07-00-exactly",
    ),
]


@pytest.mark.parametrize(("make", "after", "until", "limit", "expected"), FIRE_TIMES)
def test_fire_times(make: Callable[[], Trigger], after: str, until: str, limit: int, expected: list[str]) -> None:
    listed = triggers.fire_times(make(), utc(after), utc(until), limit=limit)
    assert [show(t) for t in listed] == [show(utc(text)) for text in expected]


def test_fire_times_default_limit_is_1000() -> None:
    listed = triggers.fire_times(cron("* * * * *"), utc("2026-04-01 00:00"), utc("2026-04-02 00:00"))
    assert len(listed) == 1000
    # The earliest thousand minutes: 00:01 ... 16:40 (1000 min = 16 h 40 min).
    assert (show(listed[0]), show(listed[-1])) == (show(utc("2026-04-01 00:01")), show(utc("2026-04-01 16:40")))


# --- invalid schedules ----------------------------------------------------------------------------------------------

FIELDS = "expected 5 fields (minute hour day-of-month month day-of-week), got"

# Each error names the field and the problem (the part of the message checked, literally).
INVALID_CRON = [
    pytest.param("0 0 * *", f"{FIELDS} 4", id="four-fields"),
    pytest.param("0 0 * * * *", f"{FIELDS} 6", id="six-fields"),
    pytest.param("", f"{FIELDS} 0", id="empty"),
    pytest.param("60 * * * *", "minute field '60': 60 is outside 0-59", id="minute-60"),
    pytest.param("0-60 * * * *", "minute field '0-60': 60 is outside 0-59", id="minute-range-to-60"),
    pytest.param("0 24 * * *", "hour field '24': 24 is outside 0-23", id="hour-24"),
    pytest.param("0 0 0 * *", "day-of-month field '0': 0 is outside 1-31", id="dom-0"),
    pytest.param("0 0 32 * *", "day-of-month field '32': 32 is outside 1-31", id="dom-32"),
    pytest.param("0 0 1 13 *", "month field '13': 13 is outside 1-12", id="month-13"),
    pytest.param("0 0 1 0 *", "month field '0': 0 is outside 1-12", id="month-0"),
    pytest.param("0 0 * * 8", "day-of-week field '8': 8 is outside 0-7", id="dow-8"),
    pytest.param("0 0 * * 1-8", "day-of-week field '1-8': 8 is outside 0-7", id="dow-range-to-8"),
    pytest.param("*/0 * * * *", "minute field '*/0': step '0' must be a positive integer", id="step-0"),
    pytest.param(
        "0 0 * * FUN", "day-of-week field 'FUN': 'FUN' is not a number or a name (SUN,", id="unknown-day-name"
    ),
    pytest.param("0 0 1 foo *", "month field 'foo': 'foo' is not a number or a name (JAN,", id="unknown-month-name"),
    pytest.param("0 0 L * *", "day-of-month field 'L': 'L' is not a number", id="unsupported-L"),
    pytest.param("0 0 * * 5-1", "day-of-week field '5-1': range start 5 is after its end 1", id="reversed-range"),
    pytest.param("every 5 minutes", f"{FIELDS} 3", id="prose"),
    pytest.param("TZ=UTC 0 * * * *", "set the time zone in spec.timeZone, not in the expression", id="tz-prefix"),
    pytest.param(
        "CRON_TZ=Europe/Berlin 0 * * * *", "set the time zone in spec.timeZone, not in the expression", id="cron-tz"
    ),
    pytest.param("@fortnightly", "unknown macro '@fortnightly' (known: @yearly,", id="unknown-macro"),
    pytest.param("0 0 * * ٣", "only ASCII characters are allowed", id="arabic-indic-digit"),
    pytest.param("0\u00a00 * * * *", "only ASCII characters are allowed", id="no-break-space"),
]


@pytest.mark.parametrize(("expression", "problem"), INVALID_CRON)
def test_invalid_cron_expression(expression: str, problem: str) -> None:
    with pytest.raises(triggers.InvalidSchedule, match=re.escape(problem)):
        cron(expression)
    with pytest.raises(triggers.InvalidSchedule, match=re.escape(problem)):
        triggers.build_trigger({"schedule": expression}, created=CREATED)


EVERY = [
    pytest.param("@every 90s", dt.timedelta(seconds=90), id="90s"),
    pytest.param("@every 5m", dt.timedelta(minutes=5), id="5m"),
    pytest.param("@every 1h30m", dt.timedelta(hours=1, minutes=30), id="1h30m"),
    pytest.param("@every 1m30s", dt.timedelta(seconds=90), id="1m30s"),
    pytest.param("@every 24h", dt.timedelta(days=1), id="24h"),
    pytest.param("@every 1s", dt.timedelta(seconds=1), id="minimum-1s"),
    pytest.param("@every 0.1s0.1s0.1s0.1s0.1s0.1s0.1s0.1s0.1s0.1s", dt.timedelta(seconds=1), id="tenths-sum-to-1s"),
    pytest.param("@every5s", dt.timedelta(seconds=5), id="no-blank"),
]


@pytest.mark.parametrize(("text", "interval"), EVERY)
def test_parse_every(text: str, interval: dt.timedelta) -> None:
    assert triggers.parse_every(text) == interval


NOT_A_DURATION = "is not a duration such as 90s, 5m or 1h30m"
INVALID_EVERY = [
    pytest.param("@every 500ms", "the interval must be at least 1s", id="below-1s"),
    pytest.param("@every 0s", "the interval must be at least 1s", id="zero"),
    pytest.param("@every -5m", f"'-5m' {NOT_A_DURATION}", id="negative"),
    pytest.param("@every", f"'' {NOT_A_DURATION}", id="missing-duration"),
    pytest.param("@every soon", f"'soon' {NOT_A_DURATION}", id="garbage"),
    pytest.param("@every 5", f"'5' {NOT_A_DURATION}", id="missing-unit"),
    pytest.param("@every 5 minutes", f"'5 minutes' {NOT_A_DURATION}", id="prose"),
    pytest.param("@every 2562048h", "the interval must be at most 2562047h", id="beyond-go-durations"),
]


@pytest.mark.parametrize(("text", "problem"), INVALID_EVERY)
def test_invalid_every(text: str, problem: str) -> None:
    with pytest.raises(triggers.InvalidSchedule, match=re.escape(problem)):
        triggers.parse_every(text)
    with pytest.raises(triggers.InvalidSchedule, match=re.escape(problem)):
        triggers.build_trigger({"schedule": text}, created=CREATED)


NOT_A_TIME = "is not an RFC 3339 time such as 2026-12-24T18:00:00Z"
NOT_A_ZONE = "is not a known IANA time zone, such as Europe/Berlin"
ONE_OF = "exactly one of spec.schedule and spec.runAt must be set"
INVALID_SPECS = [
    pytest.param({"schedule": "0 * * * *", "timeZone": "Mars/Olympus"}, f"timeZone 'Mars/Olympus' {NOT_A_ZONE}",
                 id="unknown-zone"),
    # ZoneInfo raises a plain ValueError (not ZoneInfoNotFoundError) for this one.
    pytest.param({"schedule": "0 * * * *", "timeZone": "../../etc/passwd"},
                 f"timeZone '../../etc/passwd' {NOT_A_ZONE}", id="zone-path"),
    pytest.param({"schedule": "0 * * * *", "timeZone": "Local"}, f"timeZone 'Local' {NOT_A_ZONE}", id="go-local"),
    pytest.param({"schedule": "0 * * * *", "runAt": "2026-05-01T09:00:00Z"}, ONE_OF, id="both"),
    pytest.param({}, ONE_OF, id="neither"),
    pytest.param({"runAt": "tomorrow"}, f"runAt 'tomorrow' {NOT_A_TIME}", id="bad-run-at"),
    pytest.param({"runAt": "2026-05-01T09:00:00"}, f"runAt '2026-05-01T09:00:00' {NOT_A_TIME}", id="no-offset"),
    pytest.param({"schedule": "@hourly", "startTime": "yesterday"}, f"startTime 'yesterday' {NOT_A_TIME}",
                 id="bad-start"),
    pytest.param({"schedule": "@hourly", "endTime": "2026-13-01T00:00:00Z"},
                 f"endTime '2026-13-01T00:00:00Z' {NOT_A_TIME}", id="bad-end"),
    pytest.param({"schedule": "61 * * * *"}, "minute field '61': 61 is outside 0-59", id="bad-cron"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "problem"), INVALID_SPECS)
def test_invalid_spec(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(triggers.InvalidSchedule, match=re.escape(problem)):
        triggers.build_trigger(spec, created=CREATED)


@pytest.mark.parametrize(
    ("start", "end", "after"),
    [
        ("2026-12-24T18:00:00.0000001Z", "2026-12-24T18:00:00.0000002Z", True),
        ("2026-12-24T18:00:00.0000002Z", "2026-12-24T18:00:00.0000001Z", False),
        ("2026-12-24T18:00:00.000000100Z", "2026-12-24T18:00:00.0000001Z", False),
        ("2026-12-24T18:00:00.0000001Z", "2026-12-24T18:00:00.0000001999Z", True),  # digits below 1 ns dropped
        ("2026-12-24T18:00:00.0000001999Z", "2026-12-24T18:00:00.0000001Z", False),
        ("2026-12-24T18:00:00+01:00", "2026-12-24T17:00:00.000000001Z", True),
    ],
)
def test_end_time_is_after_start_time_to_the_nanosecond_as_the_api_server_compares(
    start: str, end: str, after: bool
) -> None:
    spec = {"schedule": "@hourly", "startTime": start, "endTime": end}
    if after:
        triggers.build_trigger(spec, created=CREATED)
    else:
        with pytest.raises(triggers.InvalidSchedule, match="endTime must be after startTime"):
            triggers.build_trigger(spec, created=CREATED)
