"""Fixtures for the node tier: a one-node cluster, and ScheduleZero installed on it by ``helm install``.

The charts are installed as shipped, with only values a user would set: the
vendor handler's image, its replicas, and a volume for the delivery journal
the tests read. A node that cannot start fails the tests; they never skip. The node runs
for this package's tests only, and is removed before the next package's.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support import controlplane, node

CHARTS = controlplane.REPO / "charts"
SYSTEM = "schedulezero-system"
SHOP = "shop"
"""The vendor handler's namespace, where the tests' Schedules live too."""
HANDLER = "acme"


@dataclasses.dataclass(frozen=True)
class Installed:
    cluster: controlplane.Cluster
    local: node.LocalCluster
    journal: pathlib.Path
    """The directory every handler pod appends its deliveries to (``<pod name>.jsonl``)."""
    handler_values: pathlib.Path

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cluster.kubectl(*args, "-o", "json").stdout)
        return result

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items = self.kubectl_json("get", "pods", "-n", namespace, *(["-l", selector] if selector else []))["items"]
        assert isinstance(items, list)
        return items


@pytest.fixture(scope="package")
def local_node(request: pytest.FixtureRequest) -> Iterator[node.LocalCluster]:
    try:
        local = node.LocalCluster(node.find_binaries())
        local.start()
    except (node.NodeError, controlplane.ControlPlaneError) as error:
        pytest.fail(f"the one-node cluster did not start: {error}", pytrace=False)
    try:
        yield local
    finally:
        if request.session.testsfailed:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_sep("-", "node logs")
                reporter.write_line(local.logs())
        local.stop()


def handler_values(journal: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    """What a user sets to run the vendor's image with three replicas; the journal is the tests' own addition."""
    values = {
        "image": {"repository": "acme/processor-handler", "tag": "1.0.0"},
        "handler": "acme-processor",
        "replicas": 3,
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "extraArgs": ["--journal=/journal/$(POD_NAME).jsonl"],
        "extraVolumes": [{"name": "journal", "hostPath": {"path": str(journal), "type": "Directory"}}],
        "extraVolumeMounts": [{"name": "journal", "mountPath": "/journal"}],
    }
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="package")
def installed(local_node: node.LocalCluster) -> Installed:
    assert local_node.cluster is not None
    cluster = local_node.cluster
    journal = local_node.dir / "journal"
    journal.mkdir(exist_ok=True)
    journal.chmod(0o777)  # the handler runs as user 10001
    values = handler_values(journal, local_node.dir / "acme-values.yaml")
    cluster.helm(
        "install", "schedulezero", str(CHARTS / "schedulezero"), "-n", SYSTEM, "--create-namespace",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    cluster.helm(
        "install", HANDLER, str(CHARTS / "handler"), "-n", SHOP, "--create-namespace", "-f", str(values),
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    return Installed(cluster=cluster, local=local_node, journal=journal, handler_values=values)
