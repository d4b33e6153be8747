"""``make -s cluster`` prints only what ``eval`` needs, and ``make cluster-down`` stops it at once."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

import pytest

from tests.support import controlplane

pytestmark = pytest.mark.e2e


def test_make_cluster_says_nothing_of_the_build_cache_and_cluster_down_does_not_wait(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "SCHEDULEZERO_CLUSTER_STATE": str(tmp_path / "cluster.json")}
    try:
        up = subprocess.run(
            ["make", "-s", "cluster"], cwd=controlplane.REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stderr
        assert [line.split("=")[0] for line in up.stdout.splitlines()] == ["export KUBECONFIG", "export PATH"]
        assert "[k8s-build" not in up.stderr, up.stderr
    finally:
        started = time.monotonic()
        down = subprocess.run(
            ["make", "-s", "cluster-down"], cwd=controlplane.REPO, env=env, capture_output=True, text=True, timeout=60
        )
        took = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    assert "cluster stopped and removed" in down.stderr
    assert took < 8, f"cluster-down took {took:.1f} s"
    assert not (tmp_path / "cluster.json").exists()
