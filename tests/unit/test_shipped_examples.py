"""What the examples and the chart's notes teach holds: their times lie ahead, their commands exist."""

from __future__ import annotations

import argparse
import datetime
import pathlib
import re

import pytest
import yaml

from schedulezero_operator import kubectl

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted([*(REPO / "manifests" / "examples").glob("*.yaml"), *(REPO / "examples" / "demo").glob("*.yaml")])
NOTES = REPO / "charts" / "schedulezero" / "templates" / "NOTES.txt"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_no_example_time_has_passed_or_will_soon(example: pathlib.Path) -> None:
    """A test applies the examples; a runAt or endTime that passes would turn one into a finished Schedule."""
    horizon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5 * 365)
    for document in yaml.safe_load_all(example.read_text()):
        spec = (document or {}).get("spec") or {}
        for field in ("runAt", "endTime"):
            if field in spec:
                moment = datetime.datetime.fromisoformat(str(spec[field]))
                assert moment > horizon, f"{example.name}: spec.{field} {spec[field]} passes within five years"


def test_the_chart_notes_teach_commands_that_exist() -> None:
    """Commands as a user copies them from ``helm install``'s output: kubectl (with the plugin's verbs) or helm."""
    [subparsers] = [a for a in kubectl.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    verbs = set(subparsers.choices)
    commands = [line.strip() for line in NOTES.read_text().splitlines() if re.match(r"^ {5}[a-z]", line)]
    commands = [c for c in commands if c.split()[0] in ("kubectl", "helm", "schedulezero")]
    assert commands
    for command in commands:
        words = command.split()
        assert words[0] in ("kubectl", "helm"), f"NOTES.txt teaches {command!r}, not as the README does"
        if words[:2] == ["kubectl", "schedulezero"]:
            assert words[2] in verbs, command
    assert any(c.startswith("kubectl schedulezero run-now ") for c in commands)
