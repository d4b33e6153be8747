"""The Schedule and Handler CRDs as the real API server serves them."""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import subprocess

import pytest
import yaml

from tests.support import controlplane

pytestmark = pytest.mark.e2e

EXAMPLES = controlplane.REPO / "manifests" / "examples"
CRDS = controlplane.REPO / "manifests" / "crds"


def printer_columns(crd_file: str, *, wide: bool = False) -> list[str]:
    """The columns ``kubectl get`` shows; with ``wide``, those of ``-o wide`` too (priority above 0)."""
    crd = yaml.safe_load((CRDS / crd_file).read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    return [column["name"].upper() for column in columns if wide or not column.get("priority")]


def header_fields(header: str, names: list[str]) -> list[str]:
    """Splits a kubectl table header on the declared names, which may contain spaces."""
    pattern = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.findall(pattern, header)


def test_server_is_the_chosen_kubernetes_release(cluster: controlplane.Cluster) -> None:
    versions = dict(
        line.split("=", 1)
        for line in (controlplane.REPO / "tools" / "k8s" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    # The version string is stamped by our own build; the module the Go toolchain compiled, with the
    # checksum the module proxy served for it, is recorded in the binary by Go itself.
    built = subprocess.run(
        ["go", "version", "-m", str(cluster.bin_dir / "kube-apiserver")], capture_output=True, text=True, check=True
    ).stdout
    compiled = re.search(r"^\s+mod\s+k8s\.io/kubernetes\s+(\S+)\s+(h1:\S+)$", built, flags=re.MULTILINE)
    assert compiled, built[:2000]
    version, checksum = compiled.groups()
    assert version == versions["KUBERNETES_VERSION"]
    go_sum = (controlplane.REPO / "tools" / "k8s" / "kubernetes" / "go.sum").read_text()
    assert f"k8s.io/kubernetes {version} {checksum}" in go_sum
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == version  # and the running server is that binary


def test_crds_are_established(cluster: controlplane.Cluster, crds: None) -> None:
    for name in ("schedules.schedulezero.io", "handlers.schedulezero.io"):
        crd = json.loads(cluster.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_applies(cluster: controlplane.Cluster, namespace: str, example: str) -> None:
    done = cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / example))
    assert re.search(r"(schedule|handler)\.schedulezero\.io/\S+ created", done.stdout), done.stdout


def test_defaults_are_filled_in(cluster: controlplane.Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "schedule-every.yaml"))
    spec = json.loads(cluster.kubectl("get", "sched", "heartbeat", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["timeZone"] == "UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["catchUpPolicy"] == "Skip"  # set in the example, not overwritten
    assert spec["suspend"] is False
    assert spec["timeoutSeconds"] == 5
    assert spec["retry"] == {"maxAttempts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 60}
    assert spec["successfulRunsHistoryLimit"] == 3
    assert spec["failedRunsHistoryLimit"] == 3


def test_a_schedule_whose_status_is_not_written_yet_says_so(cluster: controlplane.Cluster, namespace: str) -> None:
    """No operator runs here: what a user sees before the first status write (minutes, when thousands of
    Schedules are applied at once under the API budget) is a reason, not blank columns."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "schedule-every.yaml"))
    header, row = cluster.kubectl("get", "sched", "heartbeat", "-n", namespace).stdout.splitlines()
    assert row.split()[4:6] == ["Unknown", "StatusPending"], f"{header}\n{row}"  # "@every 30s" is two
    ready = cluster.kubectl("get", "sched", "heartbeat", "-n", namespace, "-o", "json")
    (condition,) = json.loads(ready.stdout)["status"]["conditions"]
    assert "API budget" in condition["message"]
    written = {"status": {"conditions": [{**condition, "status": "True", "reason": "Scheduled"}]}}
    cluster.kubectl(
        "patch", "sched", "heartbeat", "-n", namespace, "--subresource=status", "--type=merge", "-p",
        json.dumps(written),
    )  # fmt: skip
    row = cluster.kubectl("get", "sched", "heartbeat", "-n", namespace).stdout.splitlines()[1]
    assert row.split()[4:6] == ["True", "Scheduled"]


def test_get_sched_prints_the_declared_columns(cluster: controlplane.Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "schedule-cron-timezone.yaml"))
    next_run = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    last_run = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )  # kubectl shows "20m" from 10 to 180 minutes, whatever the seconds
    status = {
        "status": {
            "nextRunTime": next_run,
            "lastScheduleTime": last_run,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Scheduled",
                    "message": "",
                    "lastTransitionTime": last_run,
                }
            ],
            "runs": [{"runId": "r1", "scheduledTime": last_run, "outcome": "Succeeded", "durationSeconds": 0.25}],
            "lastRunDuration": "250ms",
            "updatedTime": last_run,
        }
    }
    cluster.kubectl(
        "patch",
        "sched",
        "nightly-report",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    header, row = cluster.kubectl("get", "sched", "-n", namespace).stdout.splitlines()
    columns = printer_columns("schedules.schedulezero.io.yaml")
    assert header_fields(header, ["NAME", *columns]) == ["NAME", *columns]
    assert columns == ["SCHEDULE", "SUSPEND", "READY", "REASON", "LAST RUN", "LAST RESULT", "NEXT RUN", "AGE"]
    assert row.split()[:6] == ["nightly-report", "30", "6", "*", "*", "MON-FRI"]
    assert row.split()[6:12] == ["false", "True", "Scheduled", "20m", "Succeeded", next_run]
    header, row = cluster.kubectl("get", "sched", "-n", namespace, "-o", "wide").stdout.splitlines()
    wide = printer_columns("schedules.schedulezero.io.yaml", wide=True)
    assert header_fields(header, ["NAME", *wide]) == ["NAME", *wide]
    assert wide[-6:] == ["HANDLER", "METHOD", "TIME ZONE", "LAST DURATION", "UPDATED", "AGE"]
    assert row.split()[12:17] == ["report-handler", "build_report", "Europe/Berlin", "250ms", "20m"]


def test_get_hdl_prints_the_declared_columns(cluster: controlplane.Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "handler-endpoint.yaml"))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "status": {
            "endpoint": "tcp://reports.example.internal:5555",
            "state": "Sleeping",
            "methodCount": 2,
            "methods": [{"name": "build_report"}, {"name": "ping"}],
            "replicas": 3,
            "readyReplicas": 2,
            "conditions": [
                {
                    "type": "Reachable",
                    "status": "True",
                    "reason": "SomeReplicasReachable",
                    "message": "",
                    "lastTransitionTime": now,
                }
            ],
        }
    }
    cluster.kubectl(
        "patch",
        "hdl",
        "report-handler",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    header, row = cluster.kubectl("get", "hdl", "-n", namespace).stdout.splitlines()
    columns = printer_columns("handlers.schedulezero.io.yaml")
    assert columns == ["ENDPOINT", "STATE", "READY", "METHODS", "REPLICAS", "AVAILABLE", "AGE"]
    assert header_fields(header, ["NAME", *columns]) == ["NAME", *columns]
    assert row.split()[:7] == [
        "report-handler",
        "tcp://reports.example.internal:5555",
        "Sleeping",
        "True",
        "2",
        "3",
        "2",
    ]


def test_explain_describes_fields(cluster: controlplane.Cluster, crds: None) -> None:
    out = cluster.kubectl("explain", "schedule.spec.concurrencyPolicy").stdout
    assert "Forbid lets the new run wait and start when the previous one ends" in " ".join(out.split())
    assert "Replace" in out


def test_every_schema_field_has_a_description() -> None:
    def walk(schema: dict[str, object], path: str) -> list[str]:
        missing = [] if "description" in schema or path.endswith(".metadata") else [path]
        properties = schema.get("properties", {})
        assert isinstance(properties, dict)
        for name, child in properties.items():
            missing += walk(child, f"{path}.{name}")
        items = schema.get("items")
        if isinstance(items, dict):
            missing += walk(items, f"{path}[]")
        return missing

    for crd_file in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(crd_file.read_text())
        assert walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], crd["spec"]["names"]["kind"]) == []


SCHEDULE = {"handler": "h", "method": "m", "schedule": "@every 5s"}

REJECTED_SCHEDULES = {
    "both schedule and runAt": (
        {**SCHEDULE, "runAt": "2030-01-01T00:00:00Z"},
        ["spec.schedule", "spec.runAt"],
    ),
    "neither schedule nor runAt": ({"handler": "h", "method": "m"}, ["spec.schedule", "spec.runAt"]),
    "unknown concurrencyPolicy": ({**SCHEDULE, "concurrencyPolicy": "Sometimes"}, ["spec.concurrencyPolicy"]),
    "unknown catchUpPolicy": ({**SCHEDULE, "catchUpPolicy": "Most"}, ["spec.catchUpPolicy"]),
    "negative timeoutSeconds": ({**SCHEDULE, "timeoutSeconds": -1}, ["spec.timeoutSeconds"]),
    "negative successful history": (
        {**SCHEDULE, "successfulRunsHistoryLimit": -1},
        ["spec.successfulRunsHistoryLimit"],
    ),
    "negative failed history": ({**SCHEDULE, "failedRunsHistoryLimit": -2}, ["spec.failedRunsHistoryLimit"]),
    "negative startingDeadlineSeconds": (
        {**SCHEDULE, "startingDeadlineSeconds": -5},
        ["spec.startingDeadlineSeconds"],
    ),
    "missing handler": ({"method": "m", "schedule": "@daily"}, ["spec.handler"]),
    "missing method": ({"handler": "h", "schedule": "@daily"}, ["spec.method"]),
    "params not an object": ({**SCHEDULE, "params": "a string"}, ["spec.params"]),
    "params a list": ({**SCHEDULE, "params": [1, 2]}, ["spec.params"]),
    "malformed schedule": ({**SCHEDULE, "schedule": "every five minutes"}, ["spec.schedule"]),
    "runAt not a time": ({"handler": "h", "method": "m", "runAt": "tomorrow"}, ["spec.runAt"]),
    "endTime before startTime": (
        {**SCHEDULE, "startTime": "2030-01-02T00:00:00Z", "endTime": "2030-01-01T00:00:00Z"},
        ["spec.endTime"],
    ),
    "zero maxAttempts": ({**SCHEDULE, "retry": {"maxAttempts": 0}}, ["spec.retry.maxAttempts"]),
    "max backoff below backoff": (
        {**SCHEDULE, "retry": {"backoffSeconds": 10, "maxBackoffSeconds": 5}},
        ["spec.retry"],
    ),
}

REJECTED_HANDLERS = {
    "both endpoint and service": (
        {"endpoint": "tcp://127.0.0.1:5555", "service": {"name": "s", "port": 5555}},
        ["spec.endpoint", "spec.service"],
    ),
    "neither endpoint nor service": ({}, ["spec.endpoint", "spec.service"]),
    "endpoint not tcp": ({"endpoint": "http://127.0.0.1:5555"}, ["spec.endpoint"]),
    "service port out of range": ({"service": {"name": "s", "port": 70000}}, ["spec.service.port"]),
}


def create(cluster: controlplane.Cluster, namespace: str, kind: str, spec: dict[str, object]) -> str:
    manifest = {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": spec,
    }
    done = cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert done.returncode != 0, f"{kind} accepted: {done.stdout}"
    return done.stderr


@pytest.mark.parametrize(("spec", "fields"), REJECTED_SCHEDULES.values(), ids=REJECTED_SCHEDULES.keys())
def test_invalid_schedule_is_rejected_naming_the_field(
    cluster: controlplane.Cluster, namespace: str, spec: dict[str, object], fields: list[str]
) -> None:
    error = create(cluster, namespace, "Schedule", spec)
    assert "is invalid" in error
    for field in fields:
        assert field in error


@pytest.mark.parametrize(("spec", "fields"), REJECTED_HANDLERS.values(), ids=REJECTED_HANDLERS.keys())
def test_invalid_handler_is_rejected_naming_the_field(
    cluster: controlplane.Cluster, namespace: str, spec: dict[str, object], fields: list[str]
) -> None:
    error = create(cluster, namespace, "Handler", spec)
    assert "is invalid" in error
    for field in fields:
        assert field in error


def test_helm_assumes_the_same_kubernetes_version(cluster: controlplane.Cluster, tmp_path: pathlib.Path) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    rendered = yaml.safe_load(cluster.helm("template", str(chart)).stdout)
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert rendered["data"]["kube"].startswith(f"v{server['major']}.{server['minor']}.")
