"""The shipped alert rules and Grafana dashboard (docs/operations.md), checked with the real promtool.

promtool comes from Debian's `prometheus` package; without it these tests fail, they never skip.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
ALERTS = pathlib.Path("monitoring/prometheus/alerts.yaml")
ALERTS_TEST = pathlib.Path("monitoring/prometheus/alerts-test.yaml")
DASHBOARD = pathlib.Path("monitoring/grafana/schedulezero-dashboard.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

_OPERATOR_METRICS = {
    "schedulezero_schedule_runs_total",
    "schedulezero_schedule_next_run_timestamp_seconds",
    "schedulezero_schedule_last_success_timestamp_seconds",
    "schedulezero_schedule_suspended",
    "schedulezero_rpc_calls_total",
    "schedulezero_build_info",
    "schedulezero_status_writes_total",
    "schedulezero_status_oldest_pending_seconds",
    "schedulezero_api_requests_total",
}
_HISTOGRAMS = {
    "schedulezero_schedule_run_duration_seconds",
    "schedulezero_schedule_fire_lateness_seconds",
    "schedulezero_rpc_call_duration_seconds",
}
_CONDUCTOR_METRICS = {
    "schedulezero_handler_up",
    "schedulezero_handler_sleeping",
    "schedulezero_handler_cpu_seconds_total",
    "schedulezero_handler_resident_memory_bytes",
    "schedulezero_handler_calls_total",
    "schedulezero_handler_calls_in_flight",
    "schedulezero_handler_start_time_seconds",
    "schedulezero_conductor_scrape_duration_seconds",
}
KNOWN_METRICS = frozenset(
    _OPERATOR_METRICS
    | _CONDUCTOR_METRICS
    | {f"{name}_{suffix}" for name in _HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    | {"up"}
)
METRIC_NAME = re.compile(r"\bschedulezero_[a-z_]+|\bup\b")
# Grafana's variables, replaced by example values so promtool can parse the expressions.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$namespace": "default",
    "$handler": "default/acme",
}


def run_promtool(*args: str | pathlib.Path) -> subprocess.CompletedProcess[str]:
    """Runs promtool from the repository root; a missing promtool fails the test (it never skips)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: install Debian's `prometheus` package (apt-get install prometheus)")
    return subprocess.run([promtool, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120)


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"promtool exited with {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def load_yaml(path: pathlib.Path) -> Any:
    return yaml.safe_load((REPO / path).read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((REPO / DASHBOARD).read_text())
    return loaded


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_exprs() -> list[str]:
    """The PromQL of every panel target and every query variable (label_values(X, label) -> X)."""
    board = dashboard()
    exprs = [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))
    return exprs


def with_example_values(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def unknown_metrics(expr: str) -> set[str]:
    names = set(METRIC_NAME.findall(expr))
    assert names, f"names no metric: {expr}"
    return names - KNOWN_METRICS


def test_alert_rules_pass_promtool_check() -> None:
    done = run_promtool("check", "rules", ALERTS)
    assert done.returncode == 0, output(done)


def test_alert_rules_pass_their_unit_tests() -> None:
    done = run_promtool("test", "rules", ALERTS_TEST)
    assert done.returncode == 0, output(done)


def test_alerts_have_severity_and_templated_annotations() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "ScheduleZeroMissedRuns",
        "ScheduleZeroRunsFailing",
        "ScheduleZeroHandlerDown",
        "ScheduleZeroOperatorAbsent",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        for annotation in ("summary", "description"):
            assert "$labels." in rule["annotations"][annotation], (rule["alert"], annotation)


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - firing == set(), "alerts never expected to fire"
    assert alerts - silent == set(), "alerts never expected to stay silent"


def test_alert_rules_name_only_exported_metrics() -> None:
    for rule in alert_rules():
        assert unknown_metrics(rule["expr"]) == set(), rule["alert"]


def test_dashboard_identity_and_variables() -> None:
    board = dashboard()
    assert (board["uid"], board["title"]) == ("schedulezero", "ScheduleZero")
    assert board["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "handler"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["query"]["query"].startswith("label_values("), name
    assert [panel["title"] for panel in panels(board) if panel["type"] == "row"] == ["Schedules", "Handlers"]


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in panels(dashboard()):
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, (panel["title"], target["refId"])


def test_dashboard_names_only_exported_metrics() -> None:
    for expr in dashboard_exprs():
        assert unknown_metrics(expr) == set(), expr


def test_dashboard_exprs_parse_as_promql(tmp_path: pathlib.Path) -> None:
    rules = []
    for number, expr in enumerate(map(with_example_values, dashboard_exprs())):
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:expr_{number}", "expr": expr})
    rule_file = tmp_path / "dashboard-rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run_promtool("check", "rules", rule_file)
    assert done.returncode == 0, output(done)
