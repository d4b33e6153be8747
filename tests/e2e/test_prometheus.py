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


def test_every_dashboard_expression_parses_and_names_exported_metrics(stack: Stack) -> None:
    ns = stack.namespace
    eventually(lambda: stack.prometheus.value(f'sum(schedulezero_schedule_runs_total{{namespace="{ns}"}})'))
    exported = _metric_names(stack.conductor.metrics_url) | _metric_names(f"http://{stack.operator_metrics}/metrics")
    exported |= {"up"}
    expressions = _dashboard_expressions(json.loads(DASHBOARD.read_text()))
    assert len(expressions) >= 10
    for expression in expressions:
        concrete = _substitute(expression)
        stack.prometheus.query(concrete)  # raises with Prometheus' parse error
        for name in re.findall(r"\b(schedulezero_[a-z_]+|up)\b", concrete):
            assert name in exported, f"{expression!r} names {name}, which nothing exports"


async def _call(endpoint: str, method: str) -> Any:
    async with client_.Client() as client:
        return await client.call(endpoint, method, timeout=10)


def _metric_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _dashboard_expressions(node: Any) -> list[str]:
    """Every panel target's PromQL (template variable queries are Grafana's label_values, not PromQL)."""
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) and node["expr"].strip() else []
        return found + [e for key, value in node.items() if key != "templating" for e in _dashboard_expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in _dashboard_expressions(item)]
    return []


def _substitute(expression: str) -> str:
    """Grafana's variables replaced by values Prometheus accepts."""
    replacements = {
        "$__rate_interval": "1m",
        "${__rate_interval}": "1m",
        "$__interval": "15s",
        "${__interval}": "15s",
        "$__range": "1h",
        "${__range}": "1h",
    }
    for variable, value in replacements.items():
        expression = expression.replace(variable, value)
    return re.sub(r"\$\{?(namespace|handler|schedule)(:[a-z]+)?\}?", ".*", expression)


def test_the_conductor_scrapes_curve_handlers_with_the_keys_of_their_secrets(
    cluster: controlplane.Cluster, namespace: str, system_kubeconfigs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """Under its own ServiceAccount; a Secret it cannot use costs that handler alone, and says why."""
    keys = tmp_path / "keys"
    curve_args = processes.curve_handler_args(keys, "conductor")
    with (
        processes.running_handler(PROBE, tmp_path, *curve_args) as secure,
        processes.running_handler(PROBE, tmp_path, *curve_args) as misconfigured,
    ):
        cluster.kubectl(
            "create", "secret", "generic", "secure-keys", "-n", namespace,
            f"--from-file=server.key={keys / 'server.key'}",
            f"--from-file=client.key_secret={keys / 'conductor.key_secret'}",
        )  # fmt: skip
        cluster.kubectl(
            "create", "secret", "generic", "half-keys", "-n", namespace, f"--from-file=server.key={keys / 'server.key'}"
        )  # fmt: skip
        for name, handler, secret in (("secure", secure, "secure-keys"), ("misconfigured", misconfigured, "half-keys")):
            document = json.loads(handler_doc(name, handler.endpoint))
            document["spec"]["curve"] = {"secretName": secret}
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))
        env = {"KUBECONFIG": str(system_kubeconfigs["conductor"])}
        scraper = conductor.start_conductor(tmp_path, "--namespace", namespace, env=env)
        try:
            eventually(lambda: scraper.value("schedulezero_handler_up", handler=f"{namespace}/secure") == 1)
            eventually(lambda: scraper.value("schedulezero_handler_up", handler=f"{namespace}/misconfigured") == 0)
        finally:
            scraper.stop()
    log = scraper.log.read_text()
    assert f"Secret {namespace}/half-keys lacks client.key_secret" in log
    assert "Forbidden" not in log
