"""``make cluster`` and ``make cluster-down``: the one-node cluster, started and removed without a trace.

``make -s cluster`` prints only what ``eval`` needs; ``make cluster-down``
stops it without waiting out grace periods, leaves nothing on the machine
(process, mount, interface, iptables chain, cgroup, changed sysctl), and does
so twice in a row and after an ``up`` that was killed half-way.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time

import pytest

from tests.support import controlplane, node

pytestmark = pytest.mark.e2e


def sysctls() -> dict[str, str | None]:
    return {name: node._read_sysctl(name) for name in node.SYSCTLS}


def left_behind(directory: str) -> list[str]:
    """What the cluster made that is still on the machine."""
    found = []
    if subprocess.run(["ip", "link", "show", node.BRIDGE], capture_output=True, check=False).returncode == 0:
        found.append(f"interface {node.BRIDGE}")
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True, check=False).stdout
            found += [f"{tool} -t {table} {rule}" for rule in rules.splitlines() if "KUBE-" in rule]
    found += [f"cgroup {cgroup}" for cgroup in node._cgroups()]
    found += [f"mount {point}" for point in node._mounts_under(pathlib.Path(directory))]
    if os.path.exists(directory):
        found.append(f"directory {directory}")
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if directory in command:
                found.append(f"process {proc.name}: {command[:120]}")
    if node.STATE.exists():
        found.append(f"state {node.STATE}")
    return found


def down(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        ["make", "-s", "cluster-down"], cwd=controlplane.REPO, env=env, capture_output=True, text=True, timeout=120
    )
    return done, time.monotonic() - started


def test_make_cluster_says_nothing_of_the_build_cache_and_cluster_down_does_not_wait(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "SCHEDULEZERO_CLUSTER_STATE": str(tmp_path / "cluster.json")}
    before = sysctls()
    directory = ""
    try:
        up = subprocess.run(
            ["make", "-s", "cluster"], cwd=controlplane.REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stderr
        assert [line.split("=")[0] for line in up.stdout.splitlines()] == ["export KUBECONFIG", "export PATH"]
        assert "[k8s-build" not in up.stderr, up.stderr
        kubeconfig = pathlib.Path(up.stdout.splitlines()[0].split("=", 1)[1])
        directory = str(kubeconfig.parent)
        cluster = controlplane.Cluster(kubeconfig=kubeconfig, bin_dir=controlplane.find_binaries())
        assert "Ready" in cluster.kubectl("get", "node", node.NODE_NAME).stdout
        make = ["make", "-s", "cluster"]
        again = subprocess.run(make, cwd=controlplane.REPO, env=env, capture_output=True, text=True, check=False)
        assert again.stdout == up.stdout  # a running cluster is only printed again
    finally:
        done, took = down(env)
    assert done.returncode == 0, done.stderr
    assert "cluster stopped and removed" in done.stderr
    # Without waiting out the grace of anything: the kubelet first, then every container killed.
    assert took < 20, f"cluster-down took {took:.1f} s"
    assert not (tmp_path / "cluster.json").exists()
    assert not left_behind(directory)
    assert sysctls() == before
    twice, _ = down(env)
    assert twice.returncode == 0, twice.stderr
    assert "no cluster running" in twice.stderr


def test_cluster_down_after_a_killed_cluster_up_leaves_nothing(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "SCHEDULEZERO_CLUSTER_STATE": str(tmp_path / "cluster.json")}
    before = sysctls()
    up = subprocess.Popen(
        ["make", "-s", "cluster"],
        cwd=controlplane.REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    directory = ""
    try:
        # Killed once the node is half up: the kubelet started, the cluster not yet recorded as running.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and up.poll() is None:
            state = node.running_state()
            if state and list(pathlib.Path(state["dir"]).glob("pids/*-kubelet.pid")):
                directory = state["dir"]
                break
            time.sleep(0.1)
        assert directory, "the node's kubelet never started"
    finally:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()
    assert left_behind(directory)  # the daemons outlive the killed make
    done, _ = down(env)
    assert done.returncode == 0, done.stderr
    assert "cluster stopped and removed" in done.stderr
    assert not left_behind(directory)
    assert sysctls() == before
    twice, _ = down(env)
    assert twice.returncode == 0, twice.stderr


def test_a_component_that_fails_to_start_is_named_with_its_log_and_nothing_is_left(tmp_path: pathlib.Path) -> None:
    """A kube-scheduler that exits at once: the start fails naming it with its log's tail, within a minute or two."""
    real = node.find_binaries()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in real.iterdir():
        (bin_dir / binary.name).symlink_to(binary.resolve())
    (bin_dir / "kube-scheduler").unlink()
    (bin_dir / "kube-scheduler").write_text("#!/bin/sh\necho 'the scheduler refuses: no such flag' >&2\nexit 3\n")
    (bin_dir / "kube-scheduler").chmod(0o755)
    before = sysctls()
    local = node.LocalCluster(bin_dir)
    started = time.monotonic()
    with pytest.raises(node.NodeError) as failed:
        local.start()
    assert time.monotonic() - started < 150
    assert "kube-scheduler exited with 3" in str(failed.value)
    assert "the scheduler refuses: no such flag" in str(failed.value)
    assert not left_behind(str(local.dir))
    assert sysctls() == before
