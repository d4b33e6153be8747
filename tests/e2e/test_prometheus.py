"""A real Prometheus scraping the conductor (discovering Handlers in the cluster) and the operator."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from schedulezero_handler import client as client_
from tests.support import conductor, controlplane, processes
from tests.support.operator import Operator
from tests.support.prometheus import Prometheus
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"
DASHBOARD = controlplane.REPO / "monitoring" / "grafana" / "schedulezero-dashboard.json"


def handler_doc(name: str, endpoint: str) -> str:
    return json.dumps(
        {
            "apiVersion": "schedulezero.io/v1alpha1",
            "kind": "Handler",
            "metadata": {"name": name},
            "spec": {"endpoint": endpoint},
        }
    )


class Stack:
    """Handlers, the conductor and the operator in one namespace, scraped by Prometheus."""

    def __init__(
        self, cluster: controlplane.Cluster, namespace: str, workdir: pathlib.Path, kubeconfigs: dict[str, pathlib.Path]
    ) -> None:
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.handlers = {name: processes.start_handler(PROBE, workdir) for name in ("alpha", "beta")}
        for name, handler in self.handlers.items():
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input=handler_doc(name, handler.endpoint))
        env = {"KUBECONFIG": str(kubeconfigs["conductor"])}
        self.conductor = conductor.start_conductor(workdir, "--namespace", namespace, env=env)
        operator_port = controlplane.free_port()
        self.operator = Operator(
            kubeconfigs["operator"], workdir / "operator.log", "--namespace", namespace, metrics_port=operator_port
        ).start()
        schedule = {
            "apiVersion": "schedulezero.io/v1alpha1",
            "kind": "Schedule",
            "metadata": {"name": "tick"},
            "spec": {"handler": "alpha", "method": "tick", "schedule": "@every 1s"},
        }
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(schedule))
        self.operator_metrics = f"127.0.0.1:{operator_port}"
        conductor_metrics = self.conductor.metrics_url.removeprefix("http://").removesuffix("/metrics")
        self.prometheus = Prometheus(
            workdir, {"schedulezero-conductor": conductor_metrics, "schedulezero-operator": self.operator_metrics}
        )

    def close(self) -> None:
        print(self.operator.output()[-4000:])  # captured: shown when a test failed
        self.prometheus.stop()
        self.operator.stop(signal.SIGKILL)
        self.conductor.stop()
        for handler in self.handlers.values():
            handler.kill()


@pytest.fixture
def stack(
    cluster: controlplane.Cluster,
    namespace: str,
    tmp_path: pathlib.Path,
    system_kubeconfigs: dict[str, pathlib.Path],
) -> Iterator[Stack]:
    """Operator and conductor under their ServiceAccounts, with the chart's RBAC."""
    built = Stack(cluster, namespace, tmp_path, system_kubeconfigs)
    try:
        yield built
    finally:
        built.close()


def test_prometheus_sees_the_real_state_of_the_handlers(stack: Stack) -> None:
    prometheus, ns = stack.prometheus, stack.namespace
    alpha, beta = f'handler="{ns}/alpha"', f'handler="{ns}/beta"'
    eventually(lambda: prometheus.value(f"schedulezero_handler_up{{{alpha}}}") == 1.0)
    memory = eventually(lambda: prometheus.value(f"schedulezero_handler_resident_memory_bytes{{{alpha}}}"))
    assert 5e6 < memory < 2e9  # bytes, not MiB or KiB

    asyncio.run(_call(stack.handlers["beta"].endpoint, "sys.sleep"))
    eventually(lambda: prometheus.value(f"schedulezero_handler_sleeping{{{beta}}}") == 1.0)
    stack.handlers["alpha"].kill()
    eventually(lambda: prometheus.value(f"schedulezero_handler_up{{{alpha}}}") == 0.0)

    # A Handler created after the conductor started is scraped.
    gamma = processes.start_handler(PROBE, stack.workdir)
    try:
        stack.cluster.kubectl("apply", "-n", ns, "-f", "-", input=handler_doc("gamma", gamma.endpoint))
        eventually(lambda: prometheus.value(f'schedulezero_handler_up{{handler="{ns}/gamma"}}') == 1.0)
    finally:
        gamma.kill()

    # Summed: each Schedule's Succeeded and Failed series exist, at 0, from the moment it is applied.
    eventually(lambda: prometheus.value(f'sum(schedulezero_schedule_runs_total{{namespace="{ns}",schedule="tick"}})'))
    assert prometheus.value('up{job="schedulezero-operator"}') == 1.0


def test_every_dashboard_panel_shows_data_from_the_real_operator_and_conductor(stack: Stack) -> None:
    """Each panel's query, with the dashboard's variables set as a user would (this namespace, its
    handlers), returns data from Prometheus scraping the real operator and conductor after a few runs:
    a query that parses but names a label, metric or series that is never there shows as empty here."""
    ns = stack.namespace
    failing = {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": "failing"},  # the failures panel has something to show
        "spec": {"handler": "beta", "method": "fail", "params": {"message": "on purpose"}, "schedule": "@every 2s",
                 "retry": {"maxAttempts": 1}},
    }  # fmt: skip
    stack.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(failing))
    eventually(lambda: stack.prometheus.value(f'sum(schedulezero_schedule_runs_total{{namespace="{ns}"}})'))
    exported = _metric_names(stack.conductor.metrics_url) | _metric_names(f"http://{stack.operator_metrics}/metrics")
    exported |= {"up"}
    panels = _dashboard_panels(json.loads(DASHBOARD.read_text()))
    assert len(panels) >= 20
    for title, expression in panels:
        for name in re.findall(r"\b(schedulezero_[a-z_]+|up)\b", expression):
            assert name in exported, f"panel {title!r} names {name}, which nothing exports"

    def empty() -> list[str]:
        return [title for title, expression in panels if not stack.prometheus.query(_substitute(expression, ns))]

    try:
        eventually(lambda: not empty(), timeout=90)
    except AssertionError:
        raise AssertionError(f"panels without data: {empty()}") from None


async def _call(endpoint: str, method: str) -> Any:
    async with client_.Client() as client:
        return await client.call(endpoint, method, timeout=10)


def _metric_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _dashboard_panels(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel; rows hold none."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if isinstance(target.get("expr"), str) and target["expr"].strip():
                found.append((f"{panel['title']} ({target.get('refId', 'A')})", target["expr"]))
    return found


def _substitute(expression: str, namespace: str) -> str:
    """Grafana's variables as a user would have them: this namespace, its handlers, a short rate window."""
    replacements = {
        "$__rate_interval": "20s",
        "${__rate_interval}": "20s",
        "$__interval": "5s",
        "${__interval}": "5s",
        "$__range": "1h",
        "${__range}": "1h",
    }
    for variable, value in replacements.items():
        expression = expression.replace(variable, value)
    expression = re.sub(r"\$\{?namespace(:[a-z]+)?\}?", namespace, expression)
    expression = re.sub(r"\$\{?handler(:[a-z]+)?\}?", f"{namespace}/(alpha|beta)", expression)
    return re.sub(r"\$\{?schedule(:[a-z]+)?\}?", ".*", expression)
