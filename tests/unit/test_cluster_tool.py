"""tools/k8s/cluster.py, behind ``make cluster`` and ``make cluster-down``: its state and its stop."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import time
from types import ModuleType

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def cluster_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_tool", REPO / "tools" / "k8s" / "cluster.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_checkout_has_a_cluster_of_its_own(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tool = cluster_tool()
    first, second = tmp_path / "one" / "schedulezero", tmp_path / "two" / "schedulezero"
    assert tool.default_state(first) != tool.default_state(second)
    assert tool.default_state(first) == tool.default_state(first)
    assert tool.default_state(first).parent == tmp_path / "cache" / "schedulezero" / "clusters"
    assert tool.default_state(first).name.startswith("schedulezero-")


def test_a_stopped_process_nobody_has_reaped_is_not_waited_for() -> None:
    """When the container's init does not reap orphans, a stopped API server stays a zombie: it has stopped."""
    tool = cluster_tool()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while pathlib.Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not tool._alive(child.pid)
    finally:
        child.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert tool._alive(running.pid)
    finally:
        running.kill()
        running.wait()
