"""A real one-node Kubernetes cluster on this machine: the local control plane and a node under it.

Besides etcd and kube-apiserver (``controlplane``), it runs a containerd of its
own, the kubelet, kube-controller-manager, kube-scheduler and kube-proxy
(iptables mode), all built from the same Kubernetes version. Pods get
addresses on a bridge of the cluster's own, with the CNI ``bridge`` plugin and
``host-local`` IPAM, and reach Services (and through them the API server)
through kube-proxy's rules. Pod and Service addresses stay inside the
benchmarking range 198.18.0.0/15: no masquerade and no default route, so no
pod traffic leaves the machine.

Everything lives in the cluster's directory, except what the kubelet and
kube-proxy insist on writing elsewhere; ``teardown`` removes all of it, using
only what ``STATE`` recorded, so it also cleans up after a run that was
killed. One node runs per machine at a time: its bridge, iptables chains and
cgroups have fixed names.

The images the build made (``tools/image/build.sh``) are imported into
containerd under the references the charts use by default, as ``kind load``
does, and the pause image is built locally from the static ``catatonit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from tests.support import controlplane, image

NODE_NAME = "schedulezero-node"
BRIDGE = "szbr0"
POD_CIDR = "198.18.128.0/17"
GATEWAY = "198.18.128.1"
"""The bridge's address: the pods' gateway to Services, the node's address and where the API server listens."""
SERVICE_CIDR = controlplane.SERVICE_CIDR
CNI_NETWORK = "schedulezero-node"
NODE_BINARIES = ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy")
PAUSE_IMAGE = "localhost/schedulezero/pause:catatonit"
CHART_VERSION = str(
    yaml.safe_load((controlplane.REPO / "charts" / "schedulezero" / "Chart.yaml").read_text())["appVersion"]
)
SCHEDULEZERO_IMAGE = f"ghcr.io/schedulezero/schedulezero:{CHART_VERSION}"
"""The reference both charts default to."""
VENDOR_IMAGE = "docker.io/acme/processor-handler:1.0.0"
"""The example vendor's image, as its Dockerfile names it (``--set image.repository=acme/processor-handler``)."""
IMAGES = {image.SCHEDULEZERO: SCHEDULEZERO_IMAGE, image.VENDOR: VENDOR_IMAGE}

STATE = pathlib.Path(os.environ.get("SCHEDULEZERO_NODE_STATE", "/run/schedulezero-node.json"))
"""What the running node made outside its directory, written before it makes anything."""
IMAGE_CACHE = (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "schedulezero" / "node-images"
)
SYSCTLS = (
    # Set by the node itself: forwarding between pods through kube-proxy's DNAT, and replies bridged back through it.
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    # Set by the kubelet (its kernel defaults) and kube-proxy; restored as they were.
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
)
# Paths outside the cluster's directory that the kubelet or CNI write at fixed places.
# containerd's shims keep their sockets in /run/containerd/s whatever its state directory.
FIXED_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/lib/cni", "/run/containerd")
CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
STOP_GRACE = 10.0

_LAUNCHER = 'echo $$ > "$0"; exec "$@"'
"""Writes the daemon's own PID, then becomes it: the recorded PID is the daemon's, never a wrapper's."""


class NodeError(RuntimeError):
    """A node component could not be found or started; the message names it, with its log's tail."""


def find_binaries() -> pathlib.Path:
    """The control plane's directory, which must also hold the node's binaries (tools/k8s/build.sh builds them)."""
    bin_dir = controlplane.find_binaries()
    missing = [name for name in NODE_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        raise NodeError(f"missing in {bin_dir}: {', '.join(missing)}; run tools/k8s/build.sh")
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "conntrack", "buildah"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            raise NodeError(f"{tool} is not installed; run make debs")
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.access(f"/usr/lib/cni/{plugin}", os.X_OK):
            raise NodeError(f"the CNI plugin {plugin} is not in /usr/lib/cni; run make debs")
    return bin_dir


def _run(*args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """``args`` run to the end; a failure (with ``check``) or a hang raises NodeError naming the command."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NodeError(f"{' '.join(args)} did not finish within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        raise NodeError(f"{' '.join(args)} exited with {done.returncode}:\n{done.stderr}{done.stdout}")
    return done


@dataclasses.dataclass
class Daemon:
    name: str
    popen: subprocess.Popen[bytes]
    log: pathlib.Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"--- {self.name}: no log"
        return f"--- last {len(text)} lines of {self.name} ({self.log}):\n" + "\n".join(text)


class LocalCluster:
    """etcd, kube-apiserver and a node, in one directory (the control plane's)."""

    def __init__(self, bin_dir: pathlib.Path) -> None:
        self.bin_dir = bin_dir
        self.plane = controlplane.LocalControlPlane(bin_dir, address=GATEWAY, node=True)
        self.dir = self.plane.workdir
        self.daemons: list[Daemon] = []
        self.cluster: controlplane.Cluster | None = None

    @property
    def containerd_socket(self) -> pathlib.Path:
        return self.dir / "containerd" / "containerd.sock"

    def pids(self) -> list[int]:
        """Every process of the cluster, in the order started: the control plane's, then the node's."""
        return [process.popen.pid for process in self.plane.processes] + [d.popen.pid for d in self.daemons]

    def start(self, *, timeout: float = 180.0) -> controlplane.Cluster:
        """Starts everything and waits for the node to be Ready; on failure removes what it made and raises."""
        _claim(self.dir, self.bin_dir)
        try:
            _set_sysctls()
            self._network()
            self.cluster = self.plane.start()
            self._write_pids()
            self._containerd()
            self._import_images()
            self._controller_manager()
            self._scheduler()
            self._kubelet()
            self._proxy()
            self._write_pids()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.cluster

    def stop(self) -> None:
        teardown()

    def logs(self) -> str:
        return self.plane.logs() + "\n" + "\n".join(daemon.tail() for daemon in self.daemons)

    # --- the parts, in the order they start

    def _network(self) -> None:
        """The pods' bridge, made before the API server, which listens on its address."""
        prefix = POD_CIDR.split("/")[1]
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/{prefix}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        cni = self.dir / "cni"
        cni.mkdir()
        config = {
            "cniVersion": "0.4.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": False,  # no route off the machine
                    "ipMasq": False,
                    "hairpinMode": True,  # a pod reaching itself through its Service
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                        "routes": [{"dst": SERVICE_CIDR, "gw": GATEWAY}],
                        "dataDir": str(self.dir / "cni-ipam"),
                    },
                }
            ],
        }
        (cni / "10-schedulezero.conflist").write_text(json.dumps(config, indent=2))

    def _spawn(self, name: str, args: list[str]) -> Daemon:
        logs = self.dir / "logs"
        pids = self.dir / "pids"
        logs.mkdir(exist_ok=True)
        pids.mkdir(exist_ok=True)
        binary = str(self.bin_dir / name) if (self.bin_dir / name).exists() else name
        log = logs / f"{name}.log"
        pid_file = pids / f"{len(self.daemons) + 10:02d}-{name}.pid"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                ["sh", "-c", _LAUNCHER, str(pid_file), binary, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        daemon = Daemon(name, popen, log)
        self.daemons.append(daemon)
        # Recorded before going on, so that a teardown starting at once still finds it.
        deadline = time.monotonic() + 10
        while (
            not (pid_file.exists() and pid_file.read_text().strip())
            and popen.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        return daemon

    def _write_pids(self) -> None:
        """The control plane's processes too (started by Popen, whose PID is the process's own)."""
        pids = self.dir / "pids"
        pids.mkdir(exist_ok=True)
        for index, process in enumerate(self.plane.processes):
            (pids / f"{index:02d}-{process.name}.pid").write_text(f"{process.popen.pid}\n")

    def _wait(self, daemon: Daemon, what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        """Until ``ready()`` is true; a daemon that exits or stays unready is named with its log's tail."""
        deadline = time.monotonic() + timeout
        while not ready():
            for started in self.daemons:  # any of them, not only the one awaited: none fails unnoticed
                if started.popen.poll() is not None:
                    raise NodeError(f"{started.name} exited with {started.popen.returncode}\n{started.tail()}")
            if time.monotonic() > deadline:
                raise NodeError(f"{daemon.name}: {what} after {timeout:.0f} s\n{daemon.tail()}")
            time.sleep(0.2)

    def _containerd(self) -> None:
        root = self.dir / "containerd"
        config = root / "config.toml"
        root.mkdir()
        config.write_text(
            f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # Without CAP_SYS_RESOURCE runc cannot lower a process's OOM score below its parent's.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.dir / "cni"}"
    max_conf_num = 1

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
"""
        )
        daemon = self._spawn("containerd", ["--config", str(config)])
        self._wait(daemon, "no socket", self.containerd_socket.exists, 30)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args)

    def _import_images(self) -> None:
        """The pause image and the built images, under the references pods name, from archives cached by image id."""
        if built_image_id(PAUSE_IMAGE) is None:
            _build_pause()
        IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
        for source, reference in {PAUSE_IMAGE: PAUSE_IMAGE, **IMAGES}.items():
            image_id = built_image_id(source)
            if image_id is None:
                raise NodeError(f"the image {source} is not built; run make image")
            name = hashlib.sha256(f"{image_id} {reference}".encode()).hexdigest()[:16]
            archive = IMAGE_CACHE / f"{name}.tar"
            if not archive.exists():
                for stale in IMAGE_CACHE.glob(f"*.{_slug(reference)}"):  # an older build of the same reference
                    (IMAGE_CACHE / f"{stale.name.split('.')[0]}.tar").unlink(missing_ok=True)
                    stale.unlink()
                partial = IMAGE_CACHE / f".{name}.partial"
                partial.unlink(missing_ok=True)
                image.buildah("push", "--quiet", source, f"docker-archive:{partial}:{reference}")
                partial.rename(archive)
                (IMAGE_CACHE / f"{name}.{_slug(reference)}").touch()
            self.ctr("images", "import", str(archive))

    def _controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.plane.component_kubeconfig('kube-controller-manager')}",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.plane.sa_key}",
                f"--root-ca-file={self.plane.ca_file}",
                f"--cluster-cidr={POD_CIDR}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--v=1",
            ],
        )

    def _scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={self.plane.component_kubeconfig('kube-scheduler')}",
                "--secure-port=0",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _kubelet(self) -> None:
        kubelet = self.dir / "kubelet"
        kubelet.mkdir()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # cgroup v1 here: kept working, with a warning.
            "failCgroupV1": False,
            # containerd 1.6 cannot tell the kubelet its cgroup driver.
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "cgroupRoot": "/",
            "enforceNodeAllocatable": ["pods"],
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "imageServiceEndpoint": f"unix://{self.containerd_socket}",
            "address": GATEWAY,
            "port": controlplane.free_port(),
            "readOnlyPort": 0,
            "healthzPort": 0,
            # Reached by the API server (logs, exec) on the bridge's address only.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            # The machine's iptables stay as they are, but for kube-proxy's rules.
            "makeIPTablesUtilChains": False,
            "failSwapOn": False,
            "resolvConf": "",
            "clusterDomain": "cluster.local",
            # A busy or nearly full test machine evicts nothing and collects no image.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "podPidsLimit": -1,
            "protectKernelDefaults": False,
            "podLogsDir": str(self.dir / "pod-logs"),
            "volumePluginDir": str(kubelet / "volume-plugins"),
            "shutdownGracePeriod": "0s",
            "nodeStatusUpdateFrequency": "4s",
        }
        (kubelet / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn(
            "kubelet",
            [
                f"--config={kubelet / 'config.yaml'}",
                f"--kubeconfig={self.plane.component_kubeconfig('kubelet')}",
                f"--root-dir={kubelet / 'root'}",
                f"--cert-dir={kubelet / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                "--v=1",
            ],
        )

    def _proxy(self) -> None:
        proxy = self.dir / "kube-proxy.yaml"
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.plane.component_kubeconfig("kube-proxy"))},
            "hostnameOverride": NODE_NAME,
            "bindAddress": GATEWAY,
            "healthzBindAddress": f"127.0.0.1:{controlplane.free_port()}",
            "metricsBindAddress": f"127.0.0.1:{controlplane.free_port()}",
            "clusterCIDR": POD_CIDR,
            "detectLocalMode": "ClusterCIDR",
            "nodePortAddresses": [f"{GATEWAY}/32"],
            # No route_localnet: node ports are not served on 127.0.0.1.
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            # The machine's conntrack settings stay as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        proxy.write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [f"--config={proxy}", "--v=1"])

    def _wait_ready(self, timeout: float) -> None:
        """The node Ready, the default ServiceAccount made, and kube-proxy's rules written."""
        assert self.cluster is not None
        cluster = self.cluster
        by_name = {daemon.name: daemon for daemon in self.daemons}

        def node_ready() -> bool:
            done = cluster.kubectl(
                "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False
            )
            return done.stdout.strip() == "True"

        def service_account() -> bool:
            return cluster.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0

        def proxy_rules() -> bool:
            return _run("iptables", "-t", "nat", "-S", "KUBE-SERVICES", check=False).returncode == 0

        def scheduler_alive() -> bool:
            return True

        for daemon in self.daemons:
            if daemon.popen.poll() is not None:
                raise NodeError(f"{daemon.name} exited with {daemon.popen.returncode}\n{daemon.tail()}")
        self._wait(by_name["kubelet"], "the node is not Ready", node_ready, timeout)
        self._wait(by_name["kube-controller-manager"], "no default ServiceAccount", service_account, timeout)
        self._wait(by_name["kube-proxy"], "no KUBE-SERVICES chain", proxy_rules, timeout)
        self._wait(by_name["kube-scheduler"], "", scheduler_alive, timeout)


def _slug(reference: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", reference)


def built_image_id(reference: str) -> str | None:
    done = subprocess.run(
        [*image.BUILDAH, "inspect", "--type", "image", "--format", "{{.FromImageID}}", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def _build_pause() -> None:
    """The sandbox image: the static catatonit alone, reaping the pod's orphans."""
    catatonit = shutil.which("catatonit") or "/usr/bin/catatonit"
    if not os.access(catatonit, os.X_OK):
        raise NodeError("catatonit is not installed; run make debs")
    container = image.buildah("from", "scratch")
    try:
        image.buildah("copy", container, catatonit, "/catatonit")
        image.buildah("config", "--entrypoint", '["/catatonit", "-P"]', "--user", "65535:65535", container)
        image.buildah("commit", "--quiet", container, PAUSE_IMAGE)
    finally:
        image.buildah("rm", container)


def _read_sysctl(name: str) -> str | None:
    with contextlib.suppress(OSError):
        return pathlib.Path("/proc/sys", name).read_text().strip()
    return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        pathlib.Path("/proc/sys", name).write_text(value + "\n")


def _set_sysctls() -> None:
    _write_sysctl("net/ipv4/ip_forward", "1")
    _write_sysctl("net/bridge/bridge-nf-call-iptables", "1")


def _claim(directory: pathlib.Path, bin_dir: pathlib.Path) -> None:
    """Records what the node is about to change, before changing it; refuses while another node runs."""
    previous = running_state()
    if previous is not None:
        if any(_alive(pid) for pid in _recorded(pathlib.Path(str(previous["dir"]))).values()):
            raise NodeError(
                f"a node already runs on this machine, in {previous['dir']} ({STATE}); "
                "stop it first (make cluster-down from the checkout that started it)"
            )
        teardown(quiet=True)  # what a killed run left behind
    state = {
        "dir": str(directory),
        "bin_dir": str(bin_dir),
        "sysctls": {name: value for name in SYSCTLS if (value := _read_sysctl(name)) is not None},
        "existed": [path for path in FIXED_PATHS if os.path.lexists(path)],
    }
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(state))


def running_state() -> dict[str, Any] | None:
    """What ``STATE`` records of the node on this machine, if any."""
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return dict(json.loads(STATE.read_text()))
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    return True


def _is(pid: int, directory: pathlib.Path) -> bool:
    """Whether ``pid`` is still one of the cluster's processes (a PID may have been reused since)."""
    with contextlib.suppress(OSError):
        command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return str(directory) in command
    return False


def _stop(pids: list[int], signum: int = signal.SIGTERM, grace: float = STOP_GRACE) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _cgroups() -> list[pathlib.Path]:
    """The kubelet's cgroups (``kubepods`` and below), in every hierarchy, deepest first."""
    found: list[pathlib.Path] = []
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
        top = hierarchy / "kubepods"
        if top.is_dir() and not top.is_symlink():
            found += [pathlib.Path(path) for path, _, _ in os.walk(top)]
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def _pod_processes() -> list[int]:
    pids: set[int] = set()
    for cgroup in _cgroups():
        with contextlib.suppress(OSError):
            pids.update(int(line) for line in (cgroup / "cgroup.procs").read_text().split())
    return sorted(pids)


def _shims(socket: pathlib.Path) -> list[int]:
    """The containerd shims of this cluster's containerd (they outlive it)."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if command and command[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in command:
                found.append(int(proc.name))
    return found


def _mounts_under(directory: pathlib.Path) -> list[str]:
    mounts = []
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(directory) or point.startswith(f"{directory}/"):
                mounts.append(point)
    return sorted(mounts, key=lambda point: point.count("/"), reverse=True)


def _remove_iptables(bin_dir: pathlib.Path | None) -> None:
    """kube-proxy's own clean-up, then any KUBE- chain left by it or the kubelet, and the rules jumping to them."""
    if bin_dir is not None and os.access(bin_dir / "kube-proxy", os.X_OK):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [str(bin_dir / "kube-proxy"), "--cleanup", "--proxy-mode=iptables"],
                capture_output=True,
                timeout=60,
                check=False,
            )
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            rules = _run(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()
            chains = [rule.split()[1] for rule in rules if rule.startswith("-N KUBE-")]
            for rule in rules:
                parts = rule.split()
                if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and "-j" in parts:
                    target = parts[parts.index("-j") + 1]
                    if target.startswith("KUBE-"):
                        _run(tool, "-w", "-t", table, "-D", *parts[1:], check=False)
            for chain in chains:
                _run(tool, "-w", "-t", table, "-F", chain, check=False)
            for chain in chains:
                _run(tool, "-w", "-t", table, "-X", chain, check=False)


def _recorded(directory: pathlib.Path) -> dict[str, int]:
    """The cluster's processes still running, by name, from the PID files its launcher wrote."""
    pid_files = sorted((directory / "pids").glob("*.pid")) if (directory / "pids").is_dir() else []
    recorded: dict[str, int] = {}
    for pid_file in pid_files:
        with contextlib.suppress(ValueError, OSError, IndexError):
            recorded[pid_file.stem.split("-", 1)[1]] = int(pid_file.read_text().strip())
    return {name: pid for name, pid in recorded.items() if _alive(pid) and _is(pid, directory)}


def teardown(*, quiet: bool = False) -> bool:
    """Removes the node ``STATE`` describes, whatever state it was left in; False when there was none.

    The processes first (the kubelet before the containers it would restart,
    containerd and its shims last), then their mounts, network, iptables
    rules and cgroups, the sysctls as they were, and the cluster's directory.
    """
    state = running_state()
    if state is None:
        return False
    directory = pathlib.Path(str(state["dir"]))
    bin_dir = pathlib.Path(str(state["bin_dir"])) if state.get("bin_dir") else None
    live = _recorded(directory)
    # The node's components, then every container's processes, then containerd and its shims, then the API.
    _stop(
        [live[name] for name in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager") if name in live]
    )
    _stop(_pod_processes(), signal.SIGKILL, 5.0)
    socket = directory / "containerd" / "containerd.sock"
    _stop([pid for pid in [live.get("containerd")] if pid], grace=5.0)
    _stop(_shims(socket), signal.SIGKILL, 5.0)
    for name in ("kube-apiserver", "etcd"):
        if name in live:
            _stop([live[name]])
    for point in _mounts_under(directory):
        _run("umount", "--lazy", point, check=False)
    # Every veth on the bridge (gone with its namespace, normally), then the bridge.
    links = _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout.splitlines()
    for link in links:
        _run("ip", "link", "delete", link.split(":")[1].strip().split("@")[0], check=False)
    _run("ip", "link", "delete", BRIDGE, check=False)
    _remove_iptables(bin_dir)
    for _ in range(50):
        for cgroup in _cgroups():
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        if not _cgroups():
            break
        _stop(_pod_processes(), signal.SIGKILL, 1.0)
        time.sleep(0.1)
    for name, value in (state.get("sysctls") or {}).items():
        _write_sysctl(str(name), str(value))
    existed = [str(path) for path in state.get("existed") or []]
    for fixed in FIXED_PATHS:
        if fixed not in existed:
            shutil.rmtree(fixed, ignore_errors=True)
    if "/var/log/containers" in existed:
        for entry in pathlib.Path("/var/log/containers").iterdir():
            if entry.is_symlink() and os.readlink(entry).startswith(str(directory)):
                entry.unlink()
    if "/var/lib/cni" in existed:
        for result in pathlib.Path("/var/lib/cni").glob(f"results/{CNI_NETWORK}-*"):
            result.unlink()
    shutil.rmtree(directory, ignore_errors=True)
    STATE.unlink(missing_ok=True)
    if not quiet:
        print(f"node removed ({directory})", flush=True)
    return True


@contextlib.contextmanager
def running(bin_dir: pathlib.Path | None = None) -> Iterator[tuple[LocalCluster, controlplane.Cluster]]:
    """A started one-node cluster, removed on exit."""
    local = LocalCluster(bin_dir or find_binaries())
    try:
        yield local, local.start()
    finally:
        local.stop()
