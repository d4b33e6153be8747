"""A local cluster to try ScheduleZero on: ``make cluster`` / ``make cluster-down``.

The same etcd and kube-apiserver the e2e tests start (no kubelet, no
controllers: pods are never started, so handlers and the operator run as
local processes), with the CRDs applied. The processes outlive this script;
their ids and directory are kept in ``~/.cache/schedulezero/clusters/``, in a
file of this checkout's own (named after its directory and a hash of its
path), so that ``down`` stops them and two checkouts each have their own
cluster. ``up`` on a running cluster only prints its ``KUBECONFIG`` line again.
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
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support import controlplane  # noqa: E402  (the repository's root on the path first)


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
        print("starting etcd and kube-apiserver (the binaries are built once, cached by version)...", file=sys.stderr)
        plane = controlplane.LocalControlPlane(controlplane.find_binaries())
        cluster = plane.start()
        crds = REPO / "manifests" / "crds"
        cluster.kubectl("apply", "--server-side", "-f", str(crds))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"))  # the operator's Leases go there
        state = {
            "pids": [process.popen.pid for process in plane.processes],
            "workdir": str(plane.workdir),
            "kubeconfig": str(cluster.kubeconfig),
            "kubectl": str(plane.bin_dir / "kubectl"),
        }
        STATE.parent.mkdir(parents=True, exist_ok=True)
        STATE.write_text(json.dumps(state))
        print(f"cluster up, CRDs applied; kubectl is {state['kubectl']}", file=sys.stderr)
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
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        state = json.loads(STATE.read_text())
        pids = [int(pid) for pid in state["pids"]]
        for pid in reversed(pids):  # the API server before etcd
            _stop(pid)
        shutil.rmtree(state["workdir"], ignore_errors=True)
        STATE.unlink()
        if not quiet:
            print("cluster stopped and removed", file=sys.stderr)
        return 0
    if not quiet:
        print("no cluster running", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    return up() if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
