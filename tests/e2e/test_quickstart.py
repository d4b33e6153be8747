"""The README's quick start, run as it is written: from ``make cluster`` and ``helm install`` on the one-node
cluster to pods Running and a run that succeeded."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess

import pytest

from tests.support import controlplane

pytestmark = pytest.mark.e2e

README = controlplane.REPO / "README.md"


def quickstart() -> str:
    text = README.read_text()
    match = re.search(r"<!-- quickstart:[^>]*-->\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert match, "the README has no quick start block"
    return match[1]


@pytest.mark.timeout(660)
def test_the_readme_quick_start_works_as_written(tmp_path: pathlib.Path) -> None:
    # A cluster of its own, whatever `make cluster` a developer may have running.
    env = {**os.environ, "SCHEDULEZERO_CLUSTER_STATE": str(tmp_path / "cluster.json")}
    # Should a step fail, its background processes must not outlive the walk-through (nor hold its output open).
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + quickstart()
    walk = subprocess.Popen(
        ["bash", "-c", script],
        cwd=controlplane.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = walk.communicate(timeout=600)
    finally:
        if walk.poll() is None:
            os.killpg(walk.pid, signal.SIGKILL)
            walk.wait()
        subprocess.run(["make", "-s", "cluster-down"], cwd=controlplane.REPO, env=env, check=False)
    assert walk.returncode == 0, output
    assert "schedule.schedulezero.io/acme-status condition met" in output
    table = output[output.index("NAME") :]
    # The vendor's handler pod, Running and Ready on the node, and the Handler counting it.
    assert re.search(r"pod/acme-\S+\s+1/1\s+Running\s", table), table
    assert re.search(r"acme-status\s.*\sTrue\s+Scheduled\s.*\sSucceeded\s", table), table
    assert re.search(r"handler.schedulezero.io/acme\s+tcp://acme.default.svc:5555\s+Active\s+True\s", table), table
    assert '"allowed_roots":["/data"]' in output  # the run's result, in `kubectl schedulezero runs`
    assert not (tmp_path / "cluster.json").exists()  # cluster-down removed it
