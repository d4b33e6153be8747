"""docs/time.md, held to the operator's triggers.

The document's worked examples are parsed out of it and recomputed with
``triggers.build_trigger`` and ``triggers.fire_times``:

- the ``@every`` table: each row's runs are consecutive times of its trigger;
- the Europe/Berlin tables: for the fixed-hour expressions, every run of the
  documented local days (and no other), with the local time each row gives;
  for the wildcard hour, consecutive runs with their local times;
- the Python block, run as written, which must return the runs its table gives;
- the prose examples (``startTime`` and ``endTime``, ``@hourly``, two times
  sharing the instant after a gap, steps, the two day fields), each quoted
  from the document so that a change of the text shows up here.
"""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import pathlib
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from schedulezero_operator import triggers

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "time.md"
BERLIN = ZoneInfo("Europe/Berlin")
YEAR = 2026
ANY_CREATION = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TICK = dt.timedelta(microseconds=1)
MONTHS = {name: number for number, name in enumerate(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                                      "Sep", "Oct", "Nov", "Dec"], 1)}  # fmt: skip


def text() -> str:
    return DOC.read_text()


def section(heading: str) -> str:
    """The document from ``heading`` (a whole line) to the next heading of any level."""
    lines = text().splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start + 1 : end])


def tables(part: str) -> list[list[list[str]]]:
    """Every markdown table of ``part``: its body rows, cells stripped of bold marks, header and rule left out."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*part.splitlines(), ""]:
        if line.startswith("|"):
            current.append([cell.replace("**", "").strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            found.append(current[2:])
            current = []
    return found


def consecutive(trigger: triggers.Trigger, runs: list[dt.datetime]) -> None:
    """``runs`` are times of ``trigger``, one after the other, none left out between them."""
    assert runs
    assert trigger.next_after(runs[0] - TICK) == runs[0], runs[0]
    for earlier, later in itertools.pairwise(runs):
        assert trigger.next_after(earlier) == later, (earlier, later)


def clock(value: str, day: dt.date) -> dt.datetime:
    hour, minute, *second = (int(part) for part in value.split(":"))
    return dt.datetime(day.year, day.month, day.day, hour, minute, second[0] if second else 0, tzinfo=dt.UTC)


def local(moment: dt.datetime) -> str:
    """As the tables write a local time: 02:30 CET."""
    return moment.astimezone(BERLIN).strftime("%H:%M %Z")


# -- @every ---------------------------------------------------------------------------------------------------------


def every_rows() -> list[list[str]]:
    (table,) = [t for t in tables(section("## `@every`")) if t and t[0][0].startswith("`@every")]
    return table


def spec_of(cell: str) -> dict[str, Any]:
    """'`@every 24h`, `startTime: 2026-...`' as a spec."""
    first, *fields = re.findall(r"`([^`]+)`", cell)
    spec: dict[str, Any] = {"schedule": first}
    for field in fields:
        name, value = field.split(": ", 1)
        spec[name] = value
    return spec


def test_the_every_table_lists_the_runs_its_triggers_compute() -> None:
    rows = every_rows()
    assert len(rows) == 3
    for spec_cell, created_cell, runs_cell in rows:
        spec = spec_of(spec_cell)
        created = ANY_CREATION if created_cell == "(any)" else dt.datetime.fromisoformat(created_cell)
        trigger = triggers.build_trigger(spec, created=created)
        listed = runs_cell.split("(")[0].replace("…", "").strip(" ,")
        if re.fullmatch(r"[\d:, ]+", listed):  # times of the creation day
            runs = [clock(value.strip(), created.date()) for value in listed.split(",")]
        else:  # MM-DD HH:MM
            runs = [
                clock(value.split()[1], dt.date(YEAR, *map(int, value.split()[0].split("-"))))
                for value in listed.split(",")
            ]
        consecutive(trigger, runs)
        if "the first after" in runs_cell:
            after = clock(runs_cell.split("the first after ")[1].rstrip(")"), created.date())
            assert triggers.fire_times(trigger, after - TICK, runs[0]) == [runs[0]]


def test_the_every_table_differs_from_the_cron_row_where_the_document_says() -> None:
    """'The last two rows differ from 29 March 2026': they agree before it and not from it on."""
    assert "The last two rows differ from 29 March 2026" in text()
    _, every, fixed = every_rows()
    every_runs = triggers.fire_times(
        triggers.build_trigger(spec_of(every[0]), created=ANY_CREATION),
        dt.datetime(2026, 3, 27, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 31, tzinfo=dt.UTC),
    )
    cron_runs = triggers.fire_times(
        triggers.build_trigger(spec_of(fixed[0]), created=ANY_CREATION),
        dt.datetime(2026, 3, 27, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 31, tzinfo=dt.UTC),
    )
    for a, b in zip(every_runs, cron_runs, strict=True):
        assert (a == b) == (a.date() < dt.date(2026, 3, 29)), (a, b)


# -- Europe/Berlin around the 2026 changes --------------------------------------------------------------------------


def berlin_sections() -> dict[str, str]:
    found = {}
    for heading in re.findall(r"^#### `([^`]+)` \(", text(), re.M):
        found[heading] = section(next(line for line in text().splitlines() if line.startswith(f"#### `{heading}`")))
    return found


def test_every_worked_example_is_here() -> None:
    assert set(berlin_sections()) == {"30 2 * * *", "0,30 2 * * *", "*/15 2 * * *", "30 * * * *"}


def day_of(cell: str) -> dt.date:
    """'Sat 28 Mar' as a date of 2026."""
    _, day, month = cell.split()
    return dt.date(YEAR, MONTHS[month], int(day))


def berlin_days(first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """From the start of local ``first`` to the end of local ``last``, in UTC."""
    start = dt.datetime(first.year, first.month, first.day, tzinfo=BERLIN)
    end = dt.datetime(last.year, last.month, last.day, tzinfo=BERLIN) + dt.timedelta(days=1)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def documented_days(expression: str) -> list[list[tuple[dt.date, list[dt.datetime], str]]]:
    """The fixed-hour table of ``expression``: runs of consecutive days, each (day, runs in UTC, local column)."""
    (table,) = tables(berlin_sections()[expression])
    rows = [
        (day_of(day), [clock(v.strip(), day_of(day)) for v in runs.split(",")], where) for day, runs, where in table
    ]
    groups: list[list[tuple[dt.date, list[dt.datetime], str]]] = []
    for row in rows:
        if groups and row[0] - groups[-1][-1][0] == dt.timedelta(days=1):
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


@pytest.mark.parametrize("expression", ["30 2 * * *", "0,30 2 * * *", "*/15 2 * * *"])
def test_a_fixed_hour_runs_on_each_documented_day_exactly_the_documented_times(expression: str) -> None:
    trigger = triggers.build_trigger({"schedule": expression, "timeZone": "Europe/Berlin"}, created=ANY_CREATION)
    groups = documented_days(expression)
    assert [len(group) for group in groups] == [3, 3]  # Sat, Sun, Mon around each change
    for group in groups:
        start, end = berlin_days(group[0][0], group[-1][0])
        documented = [run for _, runs, _ in group for run in runs]
        assert triggers.fire_times(trigger, start - TICK, end - TICK) == documented
        for _, runs, where in group:
            # The local column starts with the first run's local time (then its zone, or a range and its zone).
            first, zone = re.match(r"(\d\d:\d\d)\S*(?: \S+)*? (CES?T)", where).groups()  # type: ignore[union-attr]
            assert local(runs[0]) == f"{first} {zone}", (runs[0], where)


def test_a_wildcard_hour_runs_as_the_tables_say_around_both_changes() -> None:
    trigger = triggers.build_trigger({"schedule": "30 * * * *", "timeZone": "Europe/Berlin"}, created=ANY_CREATION)
    found = tables(berlin_sections()["30 * * * *"])
    assert len(found) == 2
    for table in found:
        runs = []
        for when, where in table:
            if when == "—":
                assert "does not exist" in where
                continue
            day, month, time_ = when.split()
            run = clock(time_, dt.date(YEAR, MONTHS[month], int(day)))
            assert local(run) == re.search(r"\d\d:\d\d CES?T", where)[0], (run, where)  # type: ignore[index]
            runs.append(run)
        consecutive(trigger, runs)


def test_the_python_block_returns_what_its_table_says() -> None:
    (block,) = re.findall(r"^```python\n(.*?)^```$", text(), re.M | re.S)
    tree = ast.parse(block)
    *statements, last = tree.body
    assert isinstance(last, ast.Expr)
    scope: dict[str, Any] = {}
    exec(compile(ast.Module(statements, type_ignores=[]), str(DOC), "exec"), scope)
    result = eval(compile(ast.Expression(last.value), str(DOC), "eval"), scope)
    march, _ = documented_days("0,30 2 * * *")
    assert result == [run for _, runs, _ in march for run in runs]


# -- prose ----------------------------------------------------------------------------------------------------------


def times(spec: dict[str, Any], after: str, until: str) -> list[dt.datetime]:
    trigger = triggers.build_trigger(spec, created=ANY_CREATION)
    return triggers.fire_times(trigger, dt.datetime.fromisoformat(after) - TICK, dt.datetime.fromisoformat(until))


def test_the_start_and_end_time_example() -> None:
    assert (
        'So `schedule: "0 * * * *"` with `startTime: 2026-04-01T10:00:00Z` and\n'
        "`endTime: 2026-04-01T12:00:00Z` runs at 10:00, 11:00 and 12:00 UTC."
    ) in text()
    spec = {"schedule": "0 * * * *", "startTime": "2026-04-01T10:00:00Z", "endTime": "2026-04-01T12:00:00Z"}
    assert times(spec, "2026-04-01T00:00:00Z", "2026-04-02T00:00:00Z") == [
        dt.datetime(2026, 4, 1, hour, tzinfo=dt.UTC) for hour in (10, 11, 12)
    ]


def test_hourly_around_both_changes() -> None:
    prose = " ".join(text().split())
    assert (
        "`@hourly` does the same on the hour: 00:00, 01:00, 02:00 UTC on 29 March (01:00 CET, 03:00 CEST, 04:00 "
        "CEST), and 00:00 and 01:00 UTC on 25 October (02:00 CEST, then 02:00 CET)."
    ) in prose
    spec = {"schedule": "@hourly", "timeZone": "Europe/Berlin"}
    spring = times(spec, "2026-03-29T00:00:00Z", "2026-03-29T02:00:00Z")
    assert spring == [dt.datetime(2026, 3, 29, hour, tzinfo=dt.UTC) for hour in (0, 1, 2)]
    assert [local(t) for t in spring] == ["01:00 CET", "03:00 CEST", "04:00 CEST"]
    autumn = times(spec, "2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z")
    assert autumn == [dt.datetime(2026, 10, 25, hour, tzinfo=dt.UTC) for hour in (0, 1)]
    assert [local(t) for t in autumn] == ["02:00 CEST", "02:00 CET"]


def test_two_times_in_the_gap_make_one_run() -> None:
    prose = " ".join(text().split())
    assert "`0 2,3 * * *` on the spring-forward night in Berlin runs once at 03:00" in prose
    spec = {"schedule": "0 2,3 * * *", "timeZone": "Europe/Berlin"}
    assert [local(t) for t in times(spec, "2026-03-28T23:00:00Z", "2026-03-29T21:59:00Z")] == ["03:00 CEST"]


@pytest.mark.parametrize(
    ("quote", "expression", "field", "values"),
    [
        ("`*/15` is 0, 15, 30, 45", "*/15 0 * * *", "minute", [0, 15, 30, 45]),
        ("`10-30/10` is 10, 20, 30", "10-30/10 0 * * *", "minute", [10, 20, 30]),
        ("`5/20` in the minute field is 5, 25, 45", "5/20 0 * * *", "minute", [5, 25, 45]),
        ("`1/10` in day of month is 1, 11, 21, 31", "0 0 1/10 * *", "day", [1, 11, 21, 31]),
        ("`1/2` is Monday, Wednesday, Friday (not Sunday)", "0 0 * * 1/2", "weekday", [0, 2, 4]),
        ("`5-7` is Friday to Sunday", "0 0 * * 5-7", "weekday", [4, 5, 6]),
    ],
)
def test_the_step_and_range_examples(quote: str, expression: str, field: str, values: list[int]) -> None:
    assert quote in " ".join(text().split())
    found = times({"schedule": expression}, "2026-03-01T00:00:00Z", "2026-03-31T23:59:00Z")
    seen = {"minute": {t.minute for t in found}, "day": {t.day for t in found}, "weekday": {t.weekday() for t in found}}
    assert sorted(seen[field]) == values


@pytest.mark.parametrize(
    ("quote", "expression", "matches"),
    [
        ("`0 0 13 * FRI` runs on every 13th *and* every Friday", "0 0 13 * FRI",
         lambda d: d.day == 13 or d.weekday() == 4),
        ("`0 0 1-7 * MON` is not \"the first Monday\": it runs on the 1st to the 7th and on every Monday",
         "0 0 1-7 * MON", lambda d: d.day <= 7 or d.weekday() == 0),
        ("`0 0 */2 * MON` is odd days or Mondays", "0 0 */2 * MON", lambda d: d.day % 2 == 1 or d.weekday() == 0),
        ("`0 0 */1 * MON` is Mondays only", "0 0 */1 * MON", lambda d: d.weekday() == 0),
        ("`0 0 * * 7` and `0 0 * * SUN` are the same", "0 0 * * 7", lambda d: d.weekday() == 6),
    ],
)  # fmt: skip
def test_the_two_day_fields_examples(quote: str, expression: str, matches: Any) -> None:
    assert quote in " ".join(text().split())
    found = times({"schedule": expression}, "2026-01-01T00:00:00Z", "2026-12-31T23:59:00Z")
    year = [dt.date(2026, 1, 1) + dt.timedelta(days=n) for n in range(365)]
    assert [t.date() for t in found] == [d for d in year if matches(d)]
