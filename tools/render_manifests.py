#!/usr/bin/env python3
"""Render manifests/ (plain YAML for `kubectl apply -f`) from charts/schedulezero.

The chart is the one source of what gets installed; manifests/ is its output
with the default values (every namespace watched), split by what a kubectl user
applies, plus the optional monitoring and NetworkPolicy objects in files of
their own. The chart's crds/ and files/ are themselves copies of the operator's
CRDs and of monitoring/; the chart is rendered with them refreshed, so one run
brings everything up to date.

    tools/render_manifests.py HELM           # write them (make manifests)
    tools/render_manifests.py HELM --check   # exit 1, naming each file that drifted
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "schedulezero"
MANIFESTS = REPO / "manifests"
NAMESPACE = "schedulezero-system"
RELEASE = "schedulezero"
HEADER = "# Generated from charts/schedulezero by `make manifests`; edit the chart, not this file.\n"

# Files copied verbatim into the chart, which can only read files inside itself.
COPIES = {
    **{
        CHART / "crds" / crd.name: crd
        for crd in sorted((REPO / "operator" / "schedulezero_operator" / "crds").glob("*.yaml"))
    },
    CHART / "files" / "alerts.yaml": REPO / "monitoring" / "prometheus" / "alerts.yaml",
    CHART / "files" / "schedulezero-dashboard.json": REPO / "monitoring" / "grafana" / "schedulezero-dashboard.json",
}

# Chart template -> manifests file.
LAYOUT = {
    "serviceaccounts.yaml": "rbac/serviceaccounts.yaml",
    "rbac.yaml": "rbac/cluster.yaml",
    "election.yaml": "rbac/election.yaml",
    "identity.yaml": "rbac/conductor-identity.yaml",
    "operator.yaml": "operator.yaml",
    "conductor.yaml": "conductor.yaml",
    "servicemonitor.yaml": "monitoring/servicemonitor.yaml",
    "prometheusrule.yaml": "monitoring/prometheusrule.yaml",
    "grafana-dashboard.yaml": "monitoring/grafana-dashboard.yaml",
    "networkpolicy.yaml": "networkpolicy.yaml",
}
# Hand-written, not generated: example Schedules and Handlers.
HAND_WRITTEN = MANIFESTS / "examples"
OPTIONAL = [
    "--set=metrics.serviceMonitor.enabled=true",
    "--set=metrics.prometheusRule.enabled=true",
    "--set=metrics.grafanaDashboard.enabled=true",
    "--set=networkPolicy.enabled=true",
]
# Labels that say Helm manages an object, untrue of kubectl-applied copies.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

NAMESPACE_DOCUMENT = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {
        "name": NAMESPACE,
        "labels": {
            "app.kubernetes.io/part-of": "schedulezero",
            # Every ScheduleZero pod meets the restricted profile.
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        },
    },
}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (rule expressions, the dashboard) as block literals."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def helm_template(helm: pathlib.Path, chart: pathlib.Path, *args: str) -> list[tuple[str, dict[str, Any]]]:
    """(template file name, document) for each object the chart renders."""
    done = subprocess.run(
        [str(helm), "template", RELEASE, str(chart), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"helm template failed:\n{done.stderr}")
    rendered = []
    for chunk in done.stdout.split("\n---\n"):
        source = next((line for line in chunk.splitlines() if line.startswith("# Source: ")), None)
        document = yaml.safe_load(chunk)
        if source and document:
            rendered.append((pathlib.PurePosixPath(source.removeprefix("# Source: ")).name, document))
    return rendered


def _strip_helm_labels(node: Any) -> None:
    if isinstance(node, dict):
        labels = node.get("labels")
        if isinstance(labels, dict):
            for label in HELM_LABELS:
                labels.pop(label, None)
        for value in node.values():
            _strip_helm_labels(value)
    elif isinstance(node, list):
        for value in node:
            _strip_helm_labels(value)


def _dump(documents: list[dict[str, Any]], comment: str = "") -> str:
    body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120) for d in documents)
    return HEADER + comment + body


def _namespaced_roles(helm: pathlib.Path, chart: pathlib.Path) -> list[dict[str, Any]]:
    """The per-namespace Roles, without a namespace, for `kubectl apply -n NS`."""
    roles = []
    args = ("--set=watchNamespaces={placeholder}", "--show-only=templates/rbac.yaml")
    for _, document in helm_template(helm, chart, *args):
        del document["metadata"]["namespace"]
        roles.append(document)
    return roles


def render(helm: pathlib.Path) -> dict[pathlib.Path, str]:
    """Every generated file and its content."""
    generated = {copy: source.read_text() for copy, source in COPIES.items()}
    generated[MANIFESTS / "crds" / "README.md"] = _CRDS_NOTE
    for copy, content in list(generated.items()):
        if copy.parent.name == "crds":
            generated[MANIFESTS / "crds" / copy.name] = content
    generated[MANIFESTS / "namespace.yaml"] = _dump([NAMESPACE_DOCUMENT])
    with tempfile.TemporaryDirectory() as scratch:
        chart = pathlib.Path(shutil.copytree(CHART, pathlib.Path(scratch) / CHART.name))
        for copy, source in COPIES.items():
            shutil.copyfile(source, chart / copy.relative_to(CHART))
        files: dict[str, list[dict[str, Any]]] = {}
        for template, document in helm_template(helm, chart, *OPTIONAL):
            files.setdefault(LAYOUT[template], []).append(document)
        files["rbac/namespace-role.yaml"] = _namespaced_roles(helm, chart)
    for name, documents in sorted(files.items()):
        for document in documents:
            _strip_helm_labels(document)
        generated[MANIFESTS / name] = _dump(documents, _COMMENTS.get(name, ""))
    return generated


_CRDS_NOTE = """\
The CustomResourceDefinitions, copied from the operator package
(operator/schedulezero_operator/crds/) by `make manifests`. Apply them before
everything else, and again (server-side) on every upgrade:

    kubectl apply --server-side -f manifests/crds/
"""

_COMMENTS = {
    "rbac/cluster.yaml": "# Cluster-wide rights, for `--all-namespaces` (the default Deployments).\n",
    "rbac/election.yaml": (
        "# The operator's Leases and checkpoints, in schedulezero-system only. Needed in every install.\n"
    ),
    "rbac/namespace-role.yaml": (
        "# The same rules as Roles in one watched namespace: `kubectl apply -n NS -f` this file per\n"
        "# namespace, instead of cluster.yaml, and give the operator and conductor `--namespace=NS`.\n"
    ),
    "monitoring/servicemonitor.yaml": "# Optional: needs the prometheus-operator CRDs.\n",
    "monitoring/prometheusrule.yaml": "# Optional: needs the prometheus-operator CRDs.\n",
    "monitoring/grafana-dashboard.yaml": "# Optional: loaded by Grafana's dashboard sidecar.\n",
    "networkpolicy.yaml": "# Optional: only Prometheus' scrapes and the operator's calls reach the pods.\n",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("helm", type=pathlib.Path, help="the helm binary")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    generated = render(args.helm)
    if args.check:
        drifted = [
            str(path.relative_to(REPO))
            for path, content in generated.items()
            if not path.exists() or path.read_text() != content
        ]
        drifted += [str(path.relative_to(REPO)) for path in _stale(generated)]
        for path in drifted:
            print(f"drifted: {path} (run make manifests)", file=sys.stderr)
        return 1 if drifted else 0
    for path in _stale(generated):
        path.unlink()
    for path, content in generated.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return 0


def _stale(generated: dict[pathlib.Path, str]) -> list[pathlib.Path]:
    """Files under manifests/ (but examples/) that the chart no longer renders."""
    return [
        path
        for path in sorted(MANIFESTS.rglob("*"))
        if path.is_file() and HAND_WRITTEN not in path.parents and path not in generated
    ]


if __name__ == "__main__":
    sys.exit(main())
