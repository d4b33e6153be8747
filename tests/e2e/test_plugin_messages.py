"""What ``kubectl schedulezero`` says, through real kubectl against the real API server: no operator needed."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.test_kubectl_plugin import plugin
from tests.e2e.test_operator import apply, get, handler_doc, schedule_doc
from tests.support import controlplane

pytestmark = pytest.mark.e2e


def test_suspend_and_resume_say_what_they_did_and_unchanged_when_nothing_was_to_do(
    cluster: controlplane.Cluster, namespace: str
) -> None:
    apply(cluster, namespace, schedule_doc("hourly", schedule="0 * * * *"))
    where = f"schedule.schedulezero.io/hourly in {namespace}"
    assert plugin(cluster, "suspend", "hourly", "-n", namespace).stdout.strip() == f"{where}: suspended"
    assert get(cluster, namespace, "sched", "hourly")["spec"]["suspend"] is True
    generation = get(cluster, namespace, "sched", "hourly")["metadata"]["generation"]
    again = plugin(cluster, "suspend", "hourly", "-n", namespace).stdout.strip()
    assert again == f"{where} unchanged (already suspended)"
    assert get(cluster, namespace, "sched", "hourly")["metadata"]["generation"] == generation  # nothing written
    assert plugin(cluster, "resume", "hourly", "-n", namespace).stdout.strip() == f"{where}: resumed"
    assert plugin(cluster, "resume", "hourly", "-n", namespace).stdout.strip() == f"{where} unchanged (not suspended)"
    assert get(cluster, namespace, "sched", "hourly")["spec"]["suspend"] is False


def test_a_missing_namespace_is_named_not_taken_for_an_empty_one(cluster: controlplane.Cluster, namespace: str) -> None:
    nope = f"nope-{uuid.uuid4().hex[:8]}"
    for args in (["runs"], ["runs", "hourly"], ["run-now", "hourly"], ["suspend", "hourly"]):
        answered = plugin(cluster, *args, "-n", nope, check=False)
        assert answered.returncode == 1, answered
        assert answered.stderr.strip() == f'error: namespace "{nope}" not found', args
    assert plugin(cluster, "runs", "-n", namespace).stdout.strip() == f"No Schedules found in namespace {namespace}"
    apply(cluster, namespace, schedule_doc("idle", schedule="0 0 1 1 *"))
    assert plugin(cluster, "runs", "-n", namespace).stdout.strip() == "no runs recorded yet"
    missing = plugin(cluster, "runs", "gone", "-n", namespace, check=False)
    assert missing.stderr.strip() == f"error: Schedule {namespace}/gone not found"


def test_describe_handler_marks_parameters_with_a_default_as_optional(
    cluster: controlplane.Cluster, namespace: str
) -> None:
    apply(cluster, namespace, handler_doc("tcp://127.0.0.1:1", name="reports"))
    methods = [
        {
            "name": "build",
            "doc": "Builds a report.",
            "params": [
                {"name": "region", "type": "str", "required": True},
                {"name": "rows", "type": "int", "required": False},
                {"name": "extra", "type": "Any", "required": False, "variadic": True},
            ],
        }
    ]
    patch = json.dumps({"status": {"methods": methods}})
    cluster.kubectl("patch", "hdl", "reports", "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
    described = plugin(cluster, "describe-handler", "reports", "-n", namespace).stdout
    [line] = [line for line in described.splitlines() if line.startswith("build ")]
    assert "region: str, rows: int (optional), **extra: Any" in line
    assert "…" not in described


def test_help_is_usage_with_examples_not_a_docstring(cluster: controlplane.Cluster) -> None:
    shown = plugin(cluster, "--help").stdout
    assert shown.startswith("usage: kubectl schedulezero VERB")
    assert "``" not in shown
    assert "examples:" in shown
    for verb in ("run-now", "suspend", "resume", "backfill", "runs", "describe-handler"):
        assert f"kubectl schedulezero {verb} " in shown, verb
