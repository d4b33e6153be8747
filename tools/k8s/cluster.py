"""A local one-node cluster to try ScheduleZero on: ``make cluster`` / ``make cluster-down``.

etcd and kube-apiserver, as the e2e tests start them, and a node under them
(containerd, kubelet, kube-controller-manager, kube-scheduler, kube-proxy:
``tests/support/node.py``), with the ScheduleZero and example vendor images
imported under the references the charts use by default and the CRDs
applied, so ``helm install`` of the charts as shipped runs pods. The
processes outlive this script; their ids and directory are kept in
``~/.cache/schedulezero/clusters/``, in a file of this checkout's own (named
after its directory and a hash of its path), so that ``down`` stops them.
``up`` on a running cluster only prints its ``KUBECONFIG`` line again. One
node runs per machine: ``up`` from another checkout says so. ``down`` also
removes what a killed ``up`` left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support import controlplane, image, node  # noqa: E402  (the repository's root on the path first)


def default_state(repo: pathlib.Path = REPO) -> pathlib.Path:
    """This checkout's cluster file: one cluster per checkout, not one per user that two checkouts would share."""
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    digest = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:12]
    return cache / "schedulezero" / "clusters" / f"{repo.resolve().name}-{digest}.json"


STATE = pathlib.Path(os.environ.get("SCHEDULEZERO_CLUSTER_STATE") or default_state())
"""Where the running cluster is remembered (``SCHEDULEZERO_CLUSTER_STATE`` to choose another file)."""

STOP_GRACE = 15.0
"""Seconds etcd and kube-apiserver get to stop on SIGTERM before they are killed."""


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs. A process that has exited but was not reaped (a zombie, when the
    container's init does not reap orphans) has stopped: waiting for it to go would wait the whole grace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"  # the state, after the command name in parentheses
    return True


def _running() -> dict[str, object] | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        state = json.loads(STATE.read_text())
        if all(_alive(int(pid)) for pid in state["pids"]):
            return dict(state)
    return None


def up() -> int:
    state = _running()
    if state is None:
        down(quiet=True)
        missing = [name for name in node.IMAGES if node.built_image_id(name) is None]
        if missing:
            print(f"building the images ({', '.join(missing)} missing): make image", file=sys.stderr)
            subprocess.run([str(REPO / "tools" / "image" / "build.sh")], check=True, stdout=sys.stderr)
        print("starting etcd, kube-apiserver and the node (the binaries are built once, cached)...", file=sys.stderr)
        try:
            local = node.LocalCluster(node.find_binaries())
            cluster = local.start()
        except (node.NodeError, controlplane.ControlPlaneError) as error:
            print(f"make cluster: {error}", file=sys.stderr)
            return 1
        crds = REPO / "manifests" / "crds"
        cluster.kubectl("apply", "--server-side", "-f", str(crds))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"))  # the operator's Leases go there
        state = {
            "pids": local.pids(),
            "workdir": str(local.dir),
            "kubeconfig": str(cluster.kubeconfig),
            "kubectl": str(local.bin_dir / "kubectl"),
        }
        STATE.parent.mkdir(parents=True, exist_ok=True)
        STATE.write_text(json.dumps(state))
        images = ", ".join(node.IMAGES[name] for name in (image.SCHEDULEZERO, image.VENDOR))
        print(f"cluster up: node {node.NODE_NAME} Ready, CRDs applied, images {images}", file=sys.stderr)
        print(f"kubectl and helm are in {local.bin_dir}", file=sys.stderr)
    print(f"export KUBECONFIG={state['kubeconfig']}")
    # kubectl, and the kubectl-schedulezero plugin beside this interpreter.
    print(f"export PATH={pathlib.Path(str(state['kubectl'])).parent}:{pathlib.Path(sys.executable).parent}:$PATH")
    return 0


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE.

    One at a time: stopped together, the API server waits on the etcd that is
    going away and etcd on the API server's connections, and both take seconds
    to give up; the API server alone stops within about a second, then etcd.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def down(*, quiet: bool = False) -> int:
    """Stops this checkout's cluster, or removes what a killed one left on the machine."""
    removed = False
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        state = json.loads(STATE.read_text())
        ours = node.running_state()
        if ours is None or ours.get("dir") == state["workdir"]:
            removed = node.teardown(quiet=True)
            pids = [int(pid) for pid in state["pids"]]
            for pid in reversed(pids):  # whatever the node's teardown did not know of
                if _alive(pid):
                    _stop(pid)
            shutil.rmtree(state["workdir"], ignore_errors=True)
        STATE.unlink()
        removed = True
    if not removed:
        removed = node.teardown(quiet=True)  # a node whose `up` was killed before it wrote STATE
    if not quiet:
        print("cluster stopped and removed" if removed else "no cluster running", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    return up() if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
