"""Fixtures for the e2e tier: a real kube-apiserver, and the CRDs installed in it.

Set ``SCHEDULEZERO_KUBECONFIG`` to run the tier against an existing cluster
instead of the local control plane; kubectl and helm still come from the build
cache. A control plane that is missing or does not come up fails the tests that
need it: they never skip.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Iterator

import kubernetes
import pytest

from tests.support import controlplane

MANIFESTS = controlplane.REPO / "manifests"
CRDS = MANIFESTS / "crds"


@pytest.fixture(scope="session")
def local_control_plane(request: pytest.FixtureRequest) -> Iterator[controlplane.LocalControlPlane | None]:
    """The local control plane, or None when the tier runs against an existing cluster."""
    if os.environ.get("SCHEDULEZERO_KUBECONFIG"):
        yield None
        return
    try:
        plane = controlplane.LocalControlPlane(controlplane.find_binaries())
        plane.start()
    except controlplane.ControlPlaneError as error:
        pytest.fail(f"local control plane unavailable: {error}", pytrace=False)
    try:
        yield plane
    finally:
        if request.session.testsfailed:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_sep("-", "control plane logs")
                reporter.write_line(plane.logs())
        plane.cleanup()


@pytest.fixture(scope="session")
def cluster(local_control_plane: controlplane.LocalControlPlane | None) -> controlplane.Cluster:
    """kubeconfig and tools for the API server under test."""
    existing = os.environ.get("SCHEDULEZERO_KUBECONFIG")
    if local_control_plane is None:
        assert existing is not None
        return controlplane.Cluster(kubeconfig=pathlib.Path(existing), bin_dir=controlplane.find_binaries())
    return controlplane.Cluster(
        kubeconfig=local_control_plane.workdir / "kubeconfig", bin_dir=local_control_plane.bin_dir
    )


@pytest.fixture(scope="session")
def api_client(cluster: controlplane.Cluster) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def crds(cluster: controlplane.Cluster) -> None:
    """The project's CRDs, applied and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))


@pytest.fixture
def namespace(cluster: controlplane.Cluster, crds: None) -> str:
    """A fresh namespace per test. No namespace controller runs locally, so it is left behind."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    return name


@pytest.fixture(scope="session")
def system_kubeconfigs(
    cluster: controlplane.Cluster, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, pathlib.Path]:
    """Kubeconfigs of the ``operator`` and ``conductor`` ServiceAccounts with manifests/rbac's cluster-wide rights.

    manifests/ is rendered from the chart (a test fails when it drifts), so the
    operator and conductor tests run with exactly the rights `helm install` grants.
    """
    for path in (
        "namespace.yaml",
        "rbac/serviceaccounts.yaml",
        "rbac/cluster.yaml",
        "rbac/election.yaml",
        "rbac/conductor-identity.yaml",
    ):
        cluster.kubectl("apply", "-f", str(MANIFESTS / path))
    directory = tmp_path_factory.mktemp("accounts")
    return {
        component: cluster.kubeconfig_for(f"schedulezero-{component}", "schedulezero-system", directory / component)
        for component in ("operator", "conductor")
    }
