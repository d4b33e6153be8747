"""The Helm charts against the real API server, with the real helm binary.

No kubelet runs here: Deployments are stored but their pods never start, so
pods built from the charts' templates are only admitted, and the operator and
conductor run as local processes under the ServiceAccounts the chart created.
"""

from __future__ import annotations

import json
import pathlib
import signal
import uuid
from typing import Any

import pytest
import yaml

from tests.support import conductor, controlplane, processes
from tests.support.operator import Operator
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

CHARTS = controlplane.REPO / "charts"
MANIFESTS = controlplane.REPO / "manifests"
HANDLER_VALUES = ["--values", str(CHARTS / "handler" / "ci" / "catalog-values.yaml")]
REPLICAS_VALUES = ["--values", str(CHARTS / "handler" / "ci" / "replicas-values.yaml")]
ALL_FEATURES = [
    "--set=metrics.serviceMonitor.enabled=true",
    "--set=metrics.prometheusRule.enabled=true",
    "--set=metrics.grafanaDashboard.enabled=true",
    "--set=networkPolicy.enabled=true",
]
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_namespace(cluster: controlplane.Cluster, labels: dict[str, str] | None = None) -> str:
    """A namespace with its default ServiceAccount, which no controller creates here."""
    name = unique("c")
    document = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(document))
    cluster.kubectl("create", "serviceaccount", "default", "-n", name)
    return name


def render(cluster: controlplane.Cluster, chart: str, release: str, namespace: str, *args: str) -> str:
    return cluster.helm("template", release, str(CHARTS / chart), "--namespace", namespace, *args).stdout


def get(cluster: controlplane.Cluster, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    scope = ["-n", namespace] if namespace else []
    return dict(json.loads(cluster.kubectl("get", kind, name, *scope, "-o", "json").stdout))


def exists(cluster: controlplane.Cluster, kind: str, name: str, namespace: str | None = None) -> bool:
    scope = ["-n", namespace] if namespace else []
    return cluster.kubectl("get", kind, name, *scope, check=False).returncode == 0


@pytest.fixture(scope="module")
def monitoring_crds(cluster: controlplane.Cluster) -> None:
    """prometheus-operator's ServiceMonitor and PrometheusRule CRDs (fetched by tools/k8s/build.sh)."""
    directory = (cluster.bin_dir / "monitoring-crds").resolve()  # kubectl does not follow a linked directory
    assert directory.is_dir(), f"{directory} is missing: run tools/k8s/build.sh"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(directory))


SYSTEM_VARIANTS = {
    "defaults": [],
    **{option.split("=")[1].split(".")[-2]: [option] for option in ALL_FEATURES},
    "every-feature": ALL_FEATURES,
    "namespaced": ["--set=watchNamespaces={NS}"],
    "no-conductor": ["--set=conductor.enabled=false"],
}


@pytest.mark.parametrize("variant", SYSTEM_VARIANTS)
def test_the_system_chart_passes_server_side_dry_run(
    cluster: controlplane.Cluster, crds: None, monitoring_crds: None, variant: str
) -> None:
    namespace = create_namespace(cluster)
    args = [a.replace("{NS}", "{" + namespace + "}") for a in SYSTEM_VARIANTS[variant]]
    rendered = render(cluster, "schedulezero", unique("sz"), namespace, *args)
    done = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "Warning" not in done.stderr, done.stderr
    assert len([line for line in done.stdout.splitlines() if "(server dry run)" in line]) == rendered.count("\nkind: ")


@pytest.mark.parametrize("values", [HANDLER_VALUES, REPLICAS_VALUES], ids=["catalog", "replicas"])
def test_the_handler_chart_passes_server_side_dry_run(
    cluster: controlplane.Cluster, crds: None, values: list[str]
) -> None:
    namespace = create_namespace(cluster)
    rendered = render(cluster, "handler", "acme", namespace, *values)
    done = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "Warning" not in done.stderr, done.stderr
    assert "handler.schedulezero.io/acme created (server dry run)" in done.stdout


@pytest.mark.parametrize(
    ("chart", "args"),
    [("schedulezero", ALL_FEATURES), ("handler", HANDLER_VALUES), ("handler", REPLICAS_VALUES)],
    ids=["schedulezero", "handler", "handler-replicas"],
)
def test_pod_templates_are_admitted_under_the_restricted_profile(
    cluster: controlplane.Cluster, crds: None, monitoring_crds: None, chart: str, args: list[str]
) -> None:
    namespace = create_namespace(cluster, RESTRICTED)
    rendered = render(cluster, chart, unique("r"), namespace, *args)
    applied = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=rendered)
    assert "Warning" not in applied.stderr, applied.stderr  # e.g. "would violate PodSecurity"

    deployments = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        template = deployment["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{deployment['metadata']['name']}-admitted",
                "labels": template["metadata"]["labels"],
            },
            "spec": template["spec"],
        }
        created = cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
        assert "Warning" not in created.stderr, created.stderr
        assert get(cluster, "pod", pod["metadata"]["name"], namespace)["status"]["phase"] == "Pending"

        # The profile is enforced: the same pod without its security context is refused.
        del pod["spec"]["securityContext"]
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            del container["securityContext"]
        pod["metadata"]["name"] += "-bare"
        refused = cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
        assert "violates PodSecurity" in refused.stderr, refused.stderr


def test_handler_replicas_roll_one_at_a_time_spread_out_and_drain_before_they_stop(
    cluster: controlplane.Cluster,
) -> None:
    documents = {d["kind"]: d for d in yaml.safe_load_all(render(cluster, "handler", "acme", "ns", *REPLICAS_VALUES))}
    deployment = documents["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    assert deployment["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = deployment["template"]["spec"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    selector = deployment["selector"]["matchLabels"]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in pod["topologySpreadConstraints"])
    args = pod["containers"][0]["args"]
    assert "--drain-delay=4" in args
    assert "--drain-timeout=20" in args
    assert pod["terminationGracePeriodSeconds"] > 4 + 20
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    budget = documents["PodDisruptionBudget"]["spec"]
    assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": deployment["selector"]["matchLabels"]}}
    # One replica: replaced, not rolled, and no budget (which would block every node drain).
    single = {d["kind"]: d for d in yaml.safe_load_all(render(cluster, "handler", "acme", "ns", *HANDLER_VALUES))}
    assert "PodDisruptionBudget" not in single
    assert single["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}


def _rules(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: sorted(v) for k, v in rule.items()} for rule in document["rules"]]


def test_the_system_chart_installs_upgrades_and_uninstalls(
    cluster: controlplane.Cluster, crds: None, namespace: str, tmp_path: pathlib.Path
) -> None:
    """And what it creates runs the operator and the conductor: the rights the other e2e tests use."""
    release = unique("sz")
    fullname = f"{release}-schedulezero"
    system = create_namespace(cluster)
    installed = cluster.helm("install", release, str(CHARTS / "schedulezero"), "--namespace", system)
    assert "Warning" not in installed.stderr, installed.stderr
    assert "kind: Schedule" in installed.stdout  # NOTES.txt: how to create a first Schedule
    operator_args = get(cluster, "deployment", f"{fullname}-operator", system)["spec"]["template"]["spec"]
    assert "--probe-interval=30" in operator_args["containers"][0]["args"]

    # The same RBAC as manifests/rbac, which the operator and conductor tests run under.
    manifests = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((MANIFESTS / "rbac" / "cluster.yaml").read_text())
        if d["kind"] == "ClusterRole"
    }
    for component in ("operator", "conductor"):
        role = get(cluster, "clusterrole", f"{fullname}-{component}")
        assert _rules(role) == _rules(manifests[f"schedulezero-{component}"])

    handler = processes.start_handler("tests.support.handlers:ProbeHandler", tmp_path)
    operator_config = cluster.kubeconfig_for(f"{fullname}-operator", system, tmp_path / "operator-kubeconfig")
    conductor_config = cluster.kubeconfig_for(f"{fullname}-conductor", system, tmp_path / "conductor-kubeconfig")
    operator = Operator(
        operator_config, tmp_path / "operator.log", "--namespace", namespace, extra=("--lease-namespace", system)
    ).start()
    scraper = conductor.start_conductor(tmp_path, "--namespace", namespace, env={"KUBECONFIG": str(conductor_config)})
    try:
        documents = [
            {"apiVersion": "schedulezero.io/v1alpha1", "kind": "Handler", "metadata": {"name": "probe"},
             "spec": {"endpoint": handler.endpoint}},
            {"apiVersion": "schedulezero.io/v1alpha1", "kind": "Schedule", "metadata": {"name": "beat"},
             "spec": {"handler": "probe", "method": "tick", "schedule": "@every 1s"}},
        ]  # fmt: skip
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))
        eventually(
            lambda: (
                get(cluster, "sched", "beat", namespace).get("status", {}).get("counters", {}).get("succeeded", 0) >= 2
            )
        )
        eventually(lambda: scraper.value("schedulezero_handler_up", handler=f"{namespace}/probe") == 1)
    finally:
        assert operator.stop(signal.SIGTERM) == 0, operator.output()[-3000:]
        scraper.stop()
        handler.popen.kill()
    assert "Forbidden" not in operator.output()
    assert "Forbidden" not in scraper.log.read_text()

    cluster.helm(
        "upgrade", release, str(CHARTS / "schedulezero"), "--namespace", system, "--set", "operator.probeInterval=10"
    )
    operator_args = get(cluster, "deployment", f"{fullname}-operator", system)["spec"]["template"]["spec"]
    assert "--probe-interval=10" in operator_args["containers"][0]["args"]
    assert json.loads(cluster.helm("history", release, "-n", system, "-o", "json").stdout)[-1]["revision"] == 2

    # The documented CRD upgrade: Helm never upgrades crds/, so they are applied first.
    crds = cluster.helm("show", "crds", str(CHARTS / "schedulezero")).stdout
    upgraded = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crds)
    assert (
        "customresourcedefinition.apiextensions.k8s.io/schedules.schedulezero.io serverside-applied" in upgraded.stdout
    )

    cluster.helm("uninstall", release, "--namespace", system)
    assert not exists(cluster, "deployment", f"{fullname}-operator", system)
    assert not exists(cluster, "clusterrole", f"{fullname}-operator")
    assert exists(cluster, "crd", "schedules.schedulezero.io")  # kept: deleting it would delete every Schedule


def test_the_handler_chart_installs_upgrades_and_uninstalls(cluster: controlplane.Cluster, crds: None) -> None:
    namespace = create_namespace(cluster)
    installed = cluster.helm("install", "acme", str(CHARTS / "handler"), "--namespace", namespace, *HANDLER_VALUES)
    assert "Warning" not in installed.stderr, installed.stderr
    handler = get(cluster, "hdl", "acme", namespace)
    assert handler["spec"] == {
        "service": {"name": "acme", "port": 5555},
        "curve": {"secretName": "acme-processor-keys"},
    }
    service = get(cluster, "service", "acme", namespace)
    assert [p["port"] for p in service["spec"]["ports"]] == [5555]
    before = get(cluster, "deployment", "acme", namespace)["spec"]["template"]["metadata"]["annotations"]

    cluster.helm(
        "upgrade", "acme", str(CHARTS / "handler"), "--namespace", namespace, *HANDLER_VALUES,
        "--set", "config.endpoint=https://eu.ingest.acme.example/v1/summaries",
    )  # fmt: skip
    config = yaml.safe_load(get(cluster, "configmap", "acme", namespace)["data"]["config.yaml"])
    assert config["endpoint"] == "https://eu.ingest.acme.example/v1/summaries"
    after = get(cluster, "deployment", "acme", namespace)["spec"]["template"]["metadata"]["annotations"]
    assert after["checksum/config"] != before["checksum/config"]  # the pod restarts to read it

    cluster.helm("uninstall", "acme", "--namespace", namespace)
    assert not exists(cluster, "hdl", "acme", namespace)
    assert not exists(cluster, "deployment", "acme", namespace)
