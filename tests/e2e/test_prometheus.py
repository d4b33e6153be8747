"""A real Prometheus scraping the conductor (discovering Handlers in the cluster) and the operator."""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
import re
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from schedulezero_handler import client as client_
from tests.e2e.test_handler_replicas import Pods, install, pod_addresses, pods
from tests.support import conductor, controlplane, processes
from tests.support.operator import Operator
from tests.support.prometheus import Prometheus
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
__all__ = ["pod_addresses", "pods"]  # fixtures: a Handler's pods behind a Service

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

    # Summed over outcomes: a Schedule has a series for each outcome it has had, from its first such run.
    eventually(lambda: prometheus.value(f'sum(schedulezero_schedule_runs_total{{namespace="{ns}",schedule="tick"}})'))
    assert prometheus.value('up{job="schedulezero-operator"}') == 1.0


def test_every_dashboard_panel_shows_data_from_the_real_operator_and_conductor(stack: Stack, pods: Pods) -> None:
    """Each panel's query, with the dashboard's variables set as a user would (this namespace, its
    handlers), returns data from Prometheus scraping the real operator and conductor after a few runs:
    a query that parses but names a label, metric or series that is never there shows as empty here.

    Real data, not what a panel shows when there is none: not the constant behind ``or vector(0)``,
    not a series lacking a label the panel groups by (a per-pod panel needs a Handler with pods: here
    one behind a Service, two pods in its EndpointSlice), not a quantile of nothing (NaN)."""
    ns = stack.namespace
    pods.start(2)
    pods.publish(ready=["probe-0", "probe-1"])
    install(pods, count=4)  # the Service, its Handler, and Schedules @every 1s whose runs spread over both pods
    failing = {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": "failing"},  # the failures panel has something to show
        "spec": {"handler": "beta", "method": "fail", "params": {"message": "on purpose"}, "schedule": "@every 2s",
                 "retry": {"maxAttempts": 1}},
    }  # fmt: skip
    suspended = {
        "apiVersion": "schedulezero.io/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": "paused"},  # the suspended-schedules panel has something to count
        "spec": {"handler": "alpha", "method": "tick", "schedule": "@every 1s", "suspend": True},
    }
    for document in (failing, suspended):
        stack.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(document))
    eventually(lambda: stack.prometheus.value(f'sum(schedulezero_schedule_runs_total{{namespace="{ns}"}})'))
    panels = _dashboard_panels(json.loads(DASHBOARD.read_text()))
    assert len(panels) >= 20

    def unexported() -> list[str]:
        """Names the panels query that neither exports (yet: the conductor scrapes the handlers every few s)."""
        exported = {"up"} | _metric_names(stack.conductor.metrics_url)
        exported |= _metric_names(f"http://{stack.operator_metrics}/metrics")
        return [f"panel {title!r} names {name}, which nothing exports"
                for title, expression in panels
                for name in re.findall(r"\b(schedulezero_[a-z_]+|up)\b", expression)
                if name not in exported]  # fmt: skip

    try:
        eventually(lambda: not unexported(), timeout=30)
    except AssertionError:
        raise AssertionError(unexported()) from None

    def empty() -> dict[str, str]:
        """The panels with no real data, and why: each must show a series of the scenario's own."""
        found = {}
        for title, expression in panels:
            why = _no_real_data(expression, stack.prometheus.query(_substitute(_without_fallback(expression), ns)))
            if why:
                found[title] = why
        return found

    try:
        eventually(lambda: not empty(), timeout=90)
    except AssertionError:
        raise AssertionError(f"panels without real data: {empty()}") from None


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


FALLBACK = re.compile(r"\s+or\s+vector\([^()]*\)\s*$")
"""A constant a panel shows when its query finds nothing (``... or vector(0)``): not data from the scenario."""


def _without_fallback(expression: str) -> str:
    return FALLBACK.sub("", expression)


def _no_real_data(expression: str, result: list[dict[str, Any]]) -> str:
    """Why ``result`` is no real data for the panel, or "" when one of its series is.

    A real series has every label the query groups by (``by (handler, pod)``:
    a series without ``pod`` is one whose pod is unknown) and a number for a
    value, not the NaN a quantile of no observations gives.
    """
    if not result:
        return "no series"
    grouped = {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expression) for label in group.split(",")}
    grouped -= {"", "le"}  # a histogram's buckets, consumed by histogram_quantile
    reasons = []
    for series in result:
        missing = sorted(label for label in grouped if not series["metric"].get(label))
        value = float(series["value"][1])
        if missing:
            reasons.append(f"{series['metric']} has no {', '.join(missing)}")
        elif not math.isfinite(value):
            reasons.append(f"{series['metric']} is {value}")
        else:
            return ""
    return "; ".join(reasons)


def test_a_panel_without_real_data_is_told_apart() -> None:
    """The checks above, on the results Prometheus gives for what is not data."""
    assert _without_fallback("count(x == 1) or vector(0)") == "count(x == 1)"
    assert _no_real_data("sum(x)", []) == "no series"
    by_pod = "sum by (handler, pod) (rate(x[1m]))"
    assert "has no pod" in _no_real_data(by_pod, [{"metric": {"handler": "a"}, "value": [0, "1"]}])
    assert "has no pod" in _no_real_data(by_pod, [{"metric": {"handler": "a", "pod": ""}, "value": [0, "1"]}])
    assert _no_real_data(by_pod, [{"metric": {"handler": "a", "pod": "p"}, "value": [0, "0"]}]) == ""
    quantile = "histogram_quantile(0.5, sum by (le) (rate(x_bucket[1m])))"
    assert "is nan" in _no_real_data(quantile, [{"metric": {}, "value": [0, "NaN"]}])
    assert _no_real_data(quantile, [{"metric": {}, "value": [0, "0.002"]}]) == ""


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
    expression = re.sub(r"\$\{?handler(:[a-z]+)?\}?", f"{namespace}/(alpha|beta|probe)", expression)
    return re.sub(r"\$\{?schedule(:[a-z]+)?\}?", ".*", expression)
