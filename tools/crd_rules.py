"""The CEL rules that make the API server refuse what the operator's parser refuses.

``spec.schedule`` and the Schedule's times are checked at apply time by
x-kubernetes-validations rules written from the same grammar as
``schedulezero_operator.cron`` and ``triggers``: a Schedule the engine would
mark InvalidSchedule never gets in. The rules are long (CEL has no functions
or variables in the API server), so they are generated here, one per cron
field, and ``tests/unit/test_crd_rules.py`` checks that the CRD holds exactly
these; an e2e test checks that the API server and the parser agree.

    .venv/bin/python tools/crd_rules.py           # writes them into the operator's CRD; then make manifests
    .venv/bin/python tools/crd_rules.py --zones   # first, when the tz database has new zones

The time zones are a list, ``schedulezero_operator/zones.py``, that both the
rule and the parser check: a zone the API server's CEL cannot load makes the
rule fail with an error, which the API server reports as ``Invalid value:
"string"`` instead of the value, while a name missing from a list is refused
with its own message.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import pathlib
import re
import zoneinfo
from typing import Any

import yaml

CRD = pathlib.Path(__file__).resolve().parents[1] / "operator/schedulezero_operator/crds/schedules.schedulezero.io.yaml"
ZONES = CRD.parents[1] / "zones.py"
SPEC_INDENT = 16
"""Indentation of the properties of spec in the CRD file."""

TOKENS = r"self.findAll('[^ \\t]+')"
"""The expression's fields: runs of characters other than space and tab, as the parser splits them."""

IS_CRON = f"{TOKENS}.size() == 5 && !{TOKENS}[0].startsWith('@')"

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

DURATION = r"([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+"
RFC3339 = (
    r"^([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-[0-9]{2}-[0-9]{2}"
    r"T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""RFC 3339 with its offset, as ``triggers.parse_time`` reads it (the year 0 exists in neither)."""


@dataclasses.dataclass(frozen=True)
class Field:
    position: int
    name: str
    numbers: str
    """A regular expression of the field's numbers, leading zeros allowed."""
    span: str
    names: list[str] = dataclasses.field(default_factory=list)
    first: int = 0
    """The value of the first name."""
    highest: int | None = None
    """Where ``N/step`` ends, when the numbers go beyond it (day-of-week: 7 is Sunday again, 6 is the end)."""


FIELDS = [
    Field(0, "minute", "[0-9]|[1-5][0-9]", "0-59"),
    Field(1, "hour", "[0-9]|1[0-9]|2[0-3]", "0-23"),
    Field(2, "day-of-month", "[1-9]|[12][0-9]|3[01]", "1-31"),
    Field(3, "month", "[1-9]|1[0-2]", "1-12 or JAN-DEC", MONTHS, first=1),
    Field(4, "day-of-week", "[0-7]", "0-7 (0 and 7 are Sunday) or SUN-SAT", WEEKDAYS, highest=6),
]


STEP = "/0*[1-9][0-9]*"
NAMES = {**{name: index + 1 for index, name in enumerate(MONTHS)}, **{name: i for i, name in enumerate(WEEKDAYS)}}
"""Month and weekday names are all different, so one table serves both fields."""


def field_pattern(field: Field) -> str:
    """A regular expression of the field as the parser accepts it, range order aside.

    ``N/step`` on day-of-week runs from N to 6, so N may not be 7 there.
    """
    value = f"0*({field.numbers})"
    if field.names:
        value = f"({value}|(?i:{'|'.join(field.names)}))"
    single = f"{value}({STEP})?"
    if field.highest is not None:  # 7 alone is Sunday, but 7/step would start past the end
        below = f"(0*[0-{field.highest}]|(?i:{'|'.join(field.names)}))"
        single = f"({value}|{below}{STEP})"
    part = f"([*?]({STEP})?|{value}-{value}({STEP})?|{single})"
    return f"^{part}(,{part})*$"


def _number(text: str) -> str:
    """CEL for the number a valid bound stands for: digits, or a month or weekday name."""
    table = ", ".join(f"'{name}': {number}" for name, number in NAMES.items())
    return f"({text}.matches('^[0-9]+$') ? int({text}) : {{{table}}}[{text}.lowerAscii()])"


def field_rules(field: Field) -> list[dict[str, Any]]:
    token = f"{TOKENS}[{field.position}]"
    ranges = f"{token}.findAll('[0-9A-Za-z]+-[0-9A-Za-z]+')"
    bounds = "r.split('-')"
    return [
        {
            "rule": f"!({IS_CRON}) || {token}.matches('{field_pattern(field)}')",
            "message": (
                f"the {field.name} field must be *, ?, a value or a range N-M of {field.span}, or a "
                "comma-separated list of these, each optionally followed by /step (step >= 1)"
            ),
        },
        {
            # Only once the field is well formed: then every bound is a small number or a name.
            "rule": (
                f"!({IS_CRON}) || !{token}.matches('{field_pattern(field)}') || "
                f"{ranges}.all(r, {_number(bounds + '[0]')} <= {_number(bounds + '[1]')})"
            ),
            "message": f"a range N-M in the {field.name} field must not start after its end",
        },
    ]


def schedule_rules() -> list[dict[str, Any]]:
    return [
        {
            "rule": "self.matches('^[\\\\x00-\\\\x7f]*$')",
            "message": "only ASCII characters are allowed",
        },
        {
            "rule": f"{TOKENS}.size() > 0 && ({TOKENS}[0].startsWith('@') || {TOKENS}.size() == 5)",
            "message": "a cron expression has 5 fields: minute hour day-of-month month day-of-week",
        },
        {
            "rule": (
                f"{TOKENS}.size() == 0 || !{TOKENS}[0].startsWith('@') || {TOKENS}[0].startsWith('@every') "
                f"|| ({TOKENS}.size() == 1 && {TOKENS}[0].lowerAscii() in "
                "['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly'])"
            ),
            "message": (
                "unknown macro: use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly "
                "or @every <duration>"
            ),
        },
        {
            "rule": (
                f"{TOKENS}.size() == 0 || !{TOKENS}[0].startsWith('@every') "
                f"|| self.matches('^[ \\\\t]*@every[ \\\\t]*{DURATION}[ \\\\t]*$')"
            ),
            "message": "@every needs a duration such as 90s, 5m or 1h30m (units h, m, s, ms, us, ns)",
        },
        {
            "rule": (
                f"!self.matches('^[ \\\\t]*@every[ \\\\t]*{DURATION}[ \\\\t]*$') "
                f"|| duration(self.findAll('{DURATION}')[0]) >= duration('1s')"
            ),
            "message": "the @every interval must be at least 1s",
        },
        *(rule for field in FIELDS for rule in field_rules(field)),
    ]


def time_rule(field: str) -> dict[str, Any]:
    """A time as text (not ``format: date-time``, whose looser layouts CEL would only see parsed)."""
    return {
        "rule": f"self.matches('{RFC3339}') && timestamp(self) >= timestamp('0001-01-01T00:00:00Z')",
        "message": f"{field} must be an RFC 3339 time with its offset, such as 2026-12-24T18:00:00Z",
    }


def time_zone_rules() -> list[dict[str, Any]]:
    """One of the listed zones: a rule that is false for any other name, where loading it in CEL would fail."""
    listed = ", ".join(f"'{name}'" for name in zone_names())
    return [
        {
            "rule": f"self in [{listed}]",
            "messageExpression": "'unknown time zone ' + self + ': timeZone must be an IANA time zone, such as "
            "Europe/Berlin'",
            "message": "timeZone must be an IANA time zone, such as Europe/Berlin",
        }
    ]


def zone_names() -> tuple[str, ...]:
    """The names of schedulezero_operator/zones.py, read without importing the operator."""
    module = ast.parse(ZONES.read_text())
    for node in module.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "NAMES":
            assert node.value is not None
            return tuple(ast.literal_eval(node.value))
    raise LookupError(f"{ZONES} defines no NAMES")


def write_zones() -> None:
    """zones.py from this machine's tz database, less ``localtime`` (the host's own zone, not a name)."""
    names = sorted(zoneinfo.available_timezones() - {"localtime", "posixrules"})
    body = "".join(f'    "{name}",\n' for name in names)
    ZONES.write_text(
        '"""The time zones a Schedule may name: written by ``tools/crd_rules.py --zones`` from the tz database.\n\n'
        "The CRD's rule for spec.timeZone lists the same names (tools/crd_rules.py), so the API server and the\n"
        "parser accept the same zones. Regenerate both when the tz database adds zones.\n"
        '"""\n\n'
        f"NAMES: tuple[str, ...] = (\n{body})\n"
    )


def rules() -> dict[str, list[dict[str, Any]]]:
    """The rules of each field of spec, as the CRD must hold them."""
    return {
        "schedule": schedule_rules(),
        "runAt": [time_rule("runAt")],
        "timeZone": time_zone_rules(),
        "startTime": [time_rule("startTime")],
        "endTime": [time_rule("endTime")],
    }


def write(text: str) -> str:
    """``text`` (the CRD) with each field's x-kubernetes-validations replaced by the generated ones."""
    lines = text.splitlines()
    for name, field_rules in rules().items():
        start = lines.index(" " * SPEC_INDENT + f"{name}:")
        end = start + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > SPEC_INDENT):
            end += 1
        block = _without_validations(lines[start + 1 : end])
        rendered = yaml.safe_dump(
            {"x-kubernetes-validations": field_rules}, width=10_000, sort_keys=False, allow_unicode=True
        )
        block += [" " * (SPEC_INDENT + 2) + line for line in rendered.splitlines()]
        lines[start + 1 : end] = block
    return "\n".join(lines) + "\n"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _without_validations(block: list[str]) -> list[str]:
    kept, skipping = [], False
    for line in block:
        if re.match(r"^ *x-kubernetes-validations:", line) and _indent(line) == SPEC_INDENT + 2:
            skipping = True
            continue
        if skipping and (_indent(line) > SPEC_INDENT + 2 or line.lstrip().startswith("- ")):
            continue
        skipping = False
        kept.append(line)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zones", action="store_true", help="first rewrite zones.py from the tz database")
    if parser.parse_args().zones:
        write_zones()
    CRD.write_text(write(CRD.read_text()))


if __name__ == "__main__":
    main()
