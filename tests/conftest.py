"""Session-wide reporting: which control plane the e2e tier runs against."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest


def pytest_report_header(config: pytest.Config) -> str | None:
    bin_dir = os.environ.get("SCHEDULEZERO_K8S_BIN")
    if os.environ.get("SCHEDULEZERO_KUBECONFIG"):
        return f"e2e: existing cluster from SCHEDULEZERO_KUBECONFIG={os.environ['SCHEDULEZERO_KUBECONFIG']}"
    if not bin_dir:
        return "e2e: local control plane from tools/k8s/build.sh"
    apiserver = pathlib.Path(bin_dir) / "kube-apiserver"
    try:
        version = subprocess.run([str(apiserver), "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        return f"e2e: local control plane in {bin_dir} UNUSABLE: {error}"
    return f"e2e: local control plane, {version.stdout.strip()} ({bin_dir})"
