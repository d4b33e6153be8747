"""A real, local Kubernetes control plane: etcd and kube-apiserver as processes.

No controllers and no kubelet run, so pods are admitted but never started and
namespaces are never finalized; everything the API server does itself (CRDs,
CEL validation, defaulting, RBAC, admission, watches) is real. Used by the e2e
tests and the benchmarks. With ``node=True`` it serves the node that
``node.py`` runs under it (``make cluster``, the node tier).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "k8s" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kubectl", "helm")
SERVICE_CIDR = "198.19.0.0/16"
"""Service ClusterIPs: inside the benchmarking range 198.18.0.0/15, like the node's pods, never a private range."""
NODE_USERS = {
    # A kubeconfig name for each node component, and the user and groups its token authenticates as.
    "kubelet": ("system:node:schedulezero-node", "system:nodes"),
    "kube-controller-manager": ("system:kube-controller-manager", ""),
    "kube-scheduler": ("system:kube-scheduler", ""),
    "kube-proxy": ("system:kube-proxy", ""),
}


class ControlPlaneError(RuntimeError):
    """The control plane could not be found or started; the message says why."""


class ToolError(RuntimeError):
    """kubectl or helm failed; the message carries its output."""


def find_binaries() -> pathlib.Path:
    """The directory holding the control-plane binaries.

    ``SCHEDULEZERO_K8S_BIN`` when set (``make`` sets it), else whatever the
    build script reports, which builds the binaries first if they are missing.
    """
    configured = os.environ.get("SCHEDULEZERO_K8S_BIN")
    if configured:
        bin_dir = pathlib.Path(configured)
    else:
        done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ControlPlaneError(f"{BUILD_SCRIPT} failed:\n{done.stderr[-4000:]}")
        bin_dir = pathlib.Path(done.stdout.strip().splitlines()[-1])
    missing = [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"missing in {bin_dir}: {', '.join(missing)}; run tools/k8s/build.sh")
    return bin_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How to reach a Kubernetes API server."""

    kubeconfig: pathlib.Path
    bin_dir: pathlib.Path

    def tool(
        self, name: str, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        done = subprocess.run(
            [str(self.bin_dir / name), *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and done.returncode != 0:
            raise ToolError(f"{name} {' '.join(args)} exited with {done.returncode}:\n{done.stderr}{done.stdout}")
        return done

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.tool("kubectl", *args, check=check, input=input)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.tool("helm", *args, check=check)

    def kubeconfig_for(self, account: str, namespace: str, path: pathlib.Path) -> pathlib.Path:
        """A kubeconfig at ``path`` that acts as ServiceAccount ``namespace/account``, with only its rights."""
        token = self.kubectl("create", "token", account, "-n", namespace, "--duration", "4h").stdout.strip()
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": account, "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = account
        path.write_text(yaml.safe_dump(config))
        return path


@dataclasses.dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: pathlib.Path

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"--- {self.name}: no log"
        return f"--- last {len(text)} lines of {self.name} ({self.log}):\n" + "\n".join(text)


class LocalControlPlane:
    """etcd and kube-apiserver on free loopback ports, in a temporary directory."""

    def __init__(self, bin_dir: pathlib.Path, *, address: str = "127.0.0.1", node: bool = False) -> None:
        """``address`` is where the API server listens. With ``node``, it also serves a node: the node's
        components get tokens of their own, the Node authorizer runs, and the ``kubernetes`` Service's
        endpoint is ``address``, which pods must reach (the node's bridge address, not loopback)."""
        self.bin_dir = bin_dir
        self.address = address
        self.node = node
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="schedulezero-k8s-"))
        self.token = secrets.token_hex(24)
        self.node_tokens = {name: secrets.token_hex(24) for name in NODE_USERS} if node else {}
        self.etcd_port = free_port()
        self.apiserver_port = free_port()
        self.processes: list[_Process] = []

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    @property
    def ca_file(self) -> pathlib.Path:
        # kube-apiserver writes a self-signed serving certificate, followed by
        # the CA that signed it, when it is given no certificate of its own.
        return self.workdir / "certs" / "apiserver.crt"

    def start(self, *, timeout: float = 120.0) -> Cluster:
        try:
            self._start_etcd()
            self._start_apiserver()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return Cluster(kubeconfig=self._write_kubeconfig(), bin_dir=self.bin_dir)

    def restart_apiserver(self, *, timeout: float = 120.0) -> None:
        """Stops and restarts kube-apiserver on the same port, keeping etcd (and so all objects)."""
        with self.apiserver_stopped(timeout=timeout):
            pass

    @contextlib.contextmanager
    def apiserver_stopped(self, *, timeout: float = 120.0) -> Iterator[None]:
        """kube-apiserver stopped for the block (etcd keeps running), then started again on the same port."""
        apiserver = next(p for p in self.processes if p.name == "kube-apiserver")
        apiserver.stop()
        self.processes.remove(apiserver)
        try:
            yield
        finally:
            self._start_apiserver()
            self._wait_ready(timeout)

    def etcd(self, method: str, body: dict[str, object]) -> dict[str, object]:
        """A call to etcd's JSON gateway (``kv/deleterange``, ``kv/compaction``...): what the API server stores,
        changed behind its back, as only an outage or etcd's own compaction would."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.etcd_port}/v3/{method}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.processes)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(_Process(name, popen, log))

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{free_port()}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self._spawn(
            "etcd",
            [
                "--name=schedulezero-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=schedulezero-test={peer}",
                "--log-level=warn",
                # A throwaway test store: durability is not worth an fsync per write.
                "--unsafe-no-fsync",
            ],
        )

    def _start_apiserver(self) -> None:
        tokens = self.workdir / "tokens.csv"
        lines = [f"{self.token},admin,admin,system:masters"]
        for name, token in self.node_tokens.items():
            user, groups = NODE_USERS[name]
            lines.append(f'{token},{user},{user},"{groups}"' if groups else f"{token},{user},{user}")
        tokens.write_text("\n".join(lines) + "\n")
        sa_key = self.sa_key
        if not sa_key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True)
        if self.node:
            # The kubernetes Service's endpoint is this address, kept by the API server itself.
            # The node has no name the machine resolves: its logs and exec are reached by its address.
            node_args = [
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=lease",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            # The kubernetes Service endpoint cannot point at loopback; nothing here needs it.
            node_args = ["--authorization-mode=RBAC", "--endpoint-reconciler-type=none"]
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--token-auth-file={tokens}",
                *node_args,
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the certificate appears only once the server is up
        request = urllib.request.Request(f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"})
        last_error = ""
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.popen.poll() is not None:
                    raise ControlPlaneError(f"{process.name} exited with {process.popen.returncode}\n{self.logs()}")
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(0.25)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f} s ({last_error})\n{self.logs()}")

    @property
    def sa_key(self) -> pathlib.Path:
        """The key ServiceAccount tokens are signed with (the controller manager signs with it too)."""
        return self.workdir / "sa.key"

    def component_kubeconfig(self, name: str) -> pathlib.Path:
        """A kubeconfig for node component ``name``, acting as its own user (see ``NODE_USERS``)."""
        return self._write_kubeconfig(self.workdir / f"{name}.kubeconfig", name, self.node_tokens[name])

    def _write_kubeconfig(
        self, kubeconfig: pathlib.Path | None = None, user: str = "admin", token: str | None = None
    ) -> pathlib.Path:
        kubeconfig = kubeconfig or self.workdir / "kubeconfig"
        token = token or self.token
        kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {self.server}
    certificate-authority: {self.ca_file}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: local
  context:
    cluster: local
    user: {user}
    namespace: default
current-context: local
"""
        )
        return kubeconfig


@contextlib.contextmanager
def running(bin_dir: pathlib.Path | None = None) -> Iterator[tuple[LocalControlPlane, Cluster]]:
    """A started control plane, stopped and removed on exit."""
    plane = LocalControlPlane(bin_dir or find_binaries())
    try:
        yield plane, plane.start()
    finally:
        plane.cleanup()
