"""Secure by default: the operator issues CURVE keys to Handlers that name none, on the real API server.

Handlers run as local processes; their keys come from the issued Secrets
through ``SecretMount``, which keeps a directory in step with a Secret as the
kubelet keeps a Secret volume.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import itertools
import json
import pathlib
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from tests.e2e.test_kubectl_plugin import plugin
from tests.e2e.test_operator import apply, eventually, get, handler_doc, schedule_doc, succeeded
from tests.support import conductor, controlplane, deliveries, processes
from tests.support.mounts import SecretMount
from tests.support.operator import Operator
from tests.support.proxy import Proxy

pytestmark = pytest.mark.e2e

PROBE = "tests.support.handlers:ProbeHandler"
SYSTEM = "schedulezero-system"


@pytest.fixture
def operator(system_kubeconfigs: dict[str, pathlib.Path], namespace: str, tmp_path: pathlib.Path) -> Iterator[Operator]:
    """The operator as the charts run it: issuing keys to every Handler that names none."""
    extra = ("--default-security", "curve", "--key-check-interval", "1")
    running = Operator(system_kubeconfigs["operator"], tmp_path / "operator.log", "--namespace", namespace, extra=extra)
    running.start()
    yield running
    running.stop(signal.SIGKILL)
    print(running.output()[-5000:])


@pytest.fixture
def core(api_client: kubernetes.client.ApiClient) -> Any:
    return kubernetes.client.CoreV1Api(api_client)


def secret(cluster: controlplane.Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", "secret", name, "-n", namespace, "-o", "json").stdout))


def encrypted(cluster: controlplane.Cluster, namespace: str, name: str = "probe") -> dict[str, Any]:
    conditions = get(cluster, namespace, "hdl", name)["status"]["conditions"]
    return next(c for c in conditions if c["type"] == "Encrypted")


def events(cluster: controlplane.Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    listed = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in listed if e["reason"] == reason]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def plaintext_call(endpoint: str, method: str = "sys.health") -> subprocess.CompletedProcess[str]:
    command = [processes.SCHEDULEZERO, "call", endpoint, method, "--timeout", "3"]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def two_free_ports() -> int:
    """A free port whose next one is free too: a handler serves its next key pair there during a rotation."""
    for _ in range(50):
        port = controlplane.free_port()
        with contextlib.suppress(OSError), socket.create_server(("127.0.0.1", port + 1)):
            return port
    raise RuntimeError("no two free ports in a row")


@contextlib.contextmanager
def issued_handler(
    cluster: controlplane.Cluster,
    core: Any,
    namespace: str,
    tmp_path: pathlib.Path,
    *args: str,
    proxy: Proxy | None = None,
) -> Iterator[processes.HandlerProcess]:
    """Applies the Handler ``probe`` with no security fields, waits for its issued Secrets and starts the
    handler on them (behind ``proxy`` when given), with ``args`` besides."""
    port = proxy.target[1] if proxy is not None else two_free_ports()
    endpoint = f"tcp://127.0.0.1:{proxy.port if proxy is not None else port}"
    apply(cluster, namespace, handler_doc(endpoint))
    eventually(lambda: secret(cluster, namespace, "probe-curve"))
    eventually(lambda: secret(cluster, namespace, "schedulezero-curve-clients"))
    server = SecretMount(core, namespace, "probe-curve", tmp_path / "mounted" / "server")
    clients = SecretMount(core, namespace, "schedulezero-curve-clients", tmp_path / "mounted" / "clients")
    try:
        eventually(lambda: (server.directory / "server.key_secret").exists())
        eventually(lambda: (clients.directory / "operator.key").exists())
        curve = ("--curve-secret-key", str(server.directory / "server.key_secret"))
        curve += ("--curve-authorized-keys", str(clients.directory))
        with processes.running_handler(PROBE, tmp_path, *curve, *args, port=port) as handler:
            yield handler
    finally:
        server.close()
        clients.close()


def issued_conductor(
    namespace: str, system_kubeconfigs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> conductor.ConductorProcess:
    """The conductor as the chart runs it: under its ServiceAccount, with the identity the operator issued it."""
    identity = f"{SYSTEM}/schedulezero-conductor-curve"
    env = {"KUBECONFIG": str(system_kubeconfigs["conductor"])}
    return conductor.start_conductor(tmp_path, "--namespace", namespace, "--curve-identity", identity, env=env)


def test_a_handler_with_no_security_fields_is_issued_keys_and_called_only_encrypted(
    cluster: controlplane.Cluster,
    namespace: str,
    operator: Operator,
    core: Any,
    system_kubeconfigs: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    marker = f"params-marker-{uuid.uuid4().hex}"
    proxy = Proxy(("127.0.0.1", controlplane.free_port()), record=True)
    try:
        with issued_handler(cluster, core, namespace, tmp_path, proxy=proxy) as handler:
            handler_secret = secret(cluster, namespace, "probe-curve")
            uid = get(cluster, namespace, "hdl", "probe")["metadata"]["uid"]
            assert handler_secret["metadata"]["labels"]["schedulezero.io/curve"] == "server"
            assert [o["uid"] for o in handler_secret["metadata"]["ownerReferences"]] == [uid]
            assert sorted(handler_secret["data"]) == ["server.key", "server.key_secret"]
            assert sorted(secret(cluster, SYSTEM, "schedulezero-operator-curve")["data"]) == [
                "client.key", "client.key_secret"
            ]  # fmt: skip

            apply(
                cluster,
                namespace,
                schedule_doc("secret", method="echo", schedule="@every 1s", params={"value": marker}),
            )
            eventually(lambda: succeeded(get(cluster, namespace, "sched", "secret")["status"]) >= 3)
            condition = eventually(lambda: encrypted(cluster, namespace))
            assert (condition["status"], condition["reason"]) == ("True", "KeysIssued")
            # Every byte between the operator and the handler went through the proxy: the params never in clear.
            assert proxy.recorded is not None
            assert len(proxy.recorded) > 1000
            assert marker.encode() not in proxy.recorded
            assert b"echo" not in proxy.recorded

            # A client without keys is refused.
            refused = plaintext_call(handler.endpoint)
            assert refused.returncode != 0, refused.stdout

            # The conductor scrapes it with its own issued identity.
            scraper = issued_conductor(namespace, system_kubeconfigs, tmp_path)
            try:
                eventually(lambda: scraper.value("schedulezero_handler_up", handler=f"{namespace}/probe") == 1)
            finally:
                scraper.stop()
    finally:
        proxy.close()


def test_a_client_key_removed_from_the_list_is_refused_within_seconds(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, core: Any, tmp_path: pathlib.Path
) -> None:
    with issued_handler(cluster, core, namespace, tmp_path) as handler:
        keys = tmp_path / "alice"
        subprocess.run([processes.SCHEDULEZERO, "keys", "generate", "alice", "--out", str(keys)], check=True)
        (keys / "server.key").write_text(
            base64.b64decode(secret(cluster, namespace, "probe-curve")["data"]["server.key"]).decode()
        )
        alice = [processes.SCHEDULEZERO, "call", handler.endpoint, "sys.health", "--timeout", "3"]
        alice += ["--curve-server-key", str(keys / "server.key"), "--curve-client-key", str(keys / "alice.key_secret")]
        public = base64.b64encode((keys / "alice.key").read_bytes()).decode()
        patch = {"data": {"alice.key": public}}
        cluster.kubectl("patch", "secret", "schedulezero-curve-clients", "-n", namespace, "-p", json.dumps(patch))
        eventually(lambda: subprocess.run(alice, capture_output=True, timeout=30).returncode == 0)

        cluster.kubectl(
            "patch", "secret", "schedulezero-curve-clients", "-n", namespace, "-p", '{"data": {"alice.key": null}}'
        )
        revoked = time.monotonic()
        eventually(lambda: subprocess.run(alice, capture_output=True, timeout=30).returncode != 0, timeout=20)
        assert time.monotonic() - revoked < 15
        # The operator keeps its own and the conductor's keys in the list, and leaves the rest to the admin.
        time.sleep(2)
        assert sorted(secret(cluster, namespace, "schedulezero-curve-clients")["data"]) == [
            "conductor.key",
            "operator.key",
        ]


def test_a_plaintext_handler_shows_encrypted_false_and_a_warning(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, tmp_path: pathlib.Path
) -> None:
    marker = f"params-marker-{uuid.uuid4().hex}"
    with processes.running_handler(PROBE, tmp_path) as handler:
        proxy = Proxy(("127.0.0.1", int(handler.endpoint.rsplit(":", 1)[1])), record=True)
        try:
            document = handler_doc(f"tcp://127.0.0.1:{proxy.port}")
            document["spec"]["security"] = "plaintext"
            opened = schedule_doc("open", method="echo", schedule="@every 1s", params={"value": marker})
            apply(cluster, namespace, document, opened)
            eventually(lambda: succeeded(get(cluster, namespace, "sched", "open")["status"]) >= 1)
            # What the capture of the encrypted test would show without CURVE: the params, in clear.
            assert proxy.recorded is not None
            assert marker.encode() in proxy.recorded
        finally:
            proxy.close()
        condition = eventually(lambda: encrypted(cluster, namespace))
        assert (condition["status"], condition["reason"]) == ("False", "Plaintext")
        warning = eventually(lambda: events(cluster, namespace, "PlaintextHandler"))[0]
        assert warning["type"] == "Warning"
        assert "clear text" in warning["message"]
        with pytest.raises(controlplane.ToolError):
            secret(cluster, namespace, "probe-curve")
        # Nothing to rotate: said at once, naming why.
        refused = plugin(cluster, "rotate-keys", "probe", "-n", namespace, check=False)
        assert refused.returncode != 0
        assert "has no issued keys to rotate: spec.security is plaintext" in refused.stderr


def test_a_deleted_or_damaged_issued_secret_is_issued_again_with_the_keys_the_handler_serves(
    cluster: controlplane.Cluster, namespace: str, operator: Operator, core: Any, tmp_path: pathlib.Path
) -> None:
    with issued_handler(cluster, core, namespace, tmp_path):
        apply(cluster, namespace, schedule_doc("steady", schedule="@every 1s"))
        eventually(lambda: succeeded(get(cluster, namespace, "sched", "steady")["status"]) >= 2)
        pair = secret(cluster, namespace, "probe-curve")["data"]

        cluster.kubectl("delete", "secret", "probe-curve", "-n", namespace)
        eventually(lambda: events(cluster, namespace, "CurveSecretReissued"))
        assert eventually(lambda: secret(cluster, namespace, "probe-curve"))["data"] == pair

        time.sleep(5)  # the operator posts one Event per object and reason per --event-interval (5 s here)
        damaged = {"data": {"server.key_secret": base64.b64encode(b"not a key").decode()}}
        cluster.kubectl("patch", "secret", "probe-curve", "-n", namespace, "-p", json.dumps(damaged))
        eventually(lambda: secret(cluster, namespace, "probe-curve")["data"] == pair)
        message = eventually(
            lambda: [e for e in events(cluster, namespace, "CurveSecretReissued") if "unusable" in e["message"]]
        )
        assert "server.key_secret" in message[0]["message"]

        before = succeeded(get(cluster, namespace, "sched", "steady")["status"])
        eventually(lambda: succeeded(get(cluster, namespace, "sched", "steady")["status"]) >= before + 2)
        runs = get(cluster, namespace, "sched", "steady")["status"]["runs"]
        assert not [r for r in runs if r["outcome"] == "Failed"]
        assert operator.popen is not None
        assert operator.popen.poll() is None


def test_a_missing_own_secret_or_a_name_taken_is_a_condition_and_an_event(
    cluster: controlplane.Cluster, namespace: str, operator: Operator
) -> None:
    byo = handler_doc("tcp://127.0.0.1:1", name="byo")
    byo["spec"]["curve"] = {"secretName": "absent"}
    broken = handler_doc("tcp://127.0.0.1:3", name="broken")
    broken["spec"]["curve"] = {"secretName": "garbled"}
    cluster.kubectl("create", "secret", "generic", "taken-curve", "-n", namespace, "--from-literal=mine=1")
    cluster.kubectl(
        "create", "secret", "generic", "garbled", "-n", namespace,
        "--from-literal=server.key=nonsense", "--from-literal=client.key_secret=nonsense",
    )  # fmt: skip
    apply(cluster, namespace, byo, broken, handler_doc("tcp://127.0.0.1:2", name="taken"))

    missing = eventually(lambda: encrypted(cluster, namespace, "byo"))
    assert (missing["status"], missing["reason"]) == ("False", "InvalidCurveSecret")
    assert "absent" in missing["message"]
    garbled = eventually(lambda: encrypted(cluster, namespace, "broken"))
    assert (garbled["status"], garbled["reason"]) == ("False", "InvalidCurveSecret")
    assert "server key holds no public-key" in garbled["message"]
    eventually(
        lambda: (
            {e["involvedObject"]["name"] for e in events(cluster, namespace, "InvalidCurveSecret")} == {"byo", "broken"}
        )
    )

    taken = eventually(lambda: encrypted(cluster, namespace, "taken"))
    assert (taken["status"], taken["reason"]) == ("False", "SecretConflict")
    eventually(lambda: events(cluster, namespace, "CurveSecretConflict"))
    assert secret(cluster, namespace, "taken-curve")["data"] == {"mine": base64.b64encode(b"1").decode()}
    assert operator.popen is not None
    assert operator.popen.poll() is None


def test_rotating_the_keys_under_every_second_schedules_loses_no_run_and_fails_no_call(
    cluster: controlplane.Cluster,
    namespace: str,
    operator: Operator,
    core: Any,
    system_kubeconfigs: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    journal = tmp_path / "journal.jsonl"
    with (
        issued_handler(cluster, core, namespace, tmp_path, "--journal", str(journal)) as handler,
        contextlib.ExitStack() as stack,
    ):
        scraper = issued_conductor(namespace, system_kubeconfigs, tmp_path)
        stack.callback(scraper.stop)
        eventually(lambda: scraper.value("schedulezero_handler_up", handler=f"{namespace}/probe") == 1)
        # Each call lasts half its period, so one is nearly always in flight when a listener changes.
        beats = (schedule_doc(f"beat-{n}", schedule="@every 1s", params={"seconds": 0.5}) for n in range(3))
        apply(cluster, namespace, *beats)
        eventually(
            lambda: all(succeeded(get(cluster, namespace, "sched", f"beat-{n}")["status"]) >= 2 for n in range(3))
        )
        before = secret(cluster, namespace, "probe-curve")["data"]["server.key"]

        said = plugin(cluster, "rotate-keys", "probe", "-n", namespace).stdout
        assert "key rotation requested" in said
        begun = eventually(lambda: "next.key" in secret(cluster, namespace, "probe-curve")["data"])
        assert begun
        # While both pairs are served, the next one answers on the port after the handler's.
        eventually(lambda: "serving the next key pair" in handler.output())
        eventually(lambda: events(cluster, namespace, "CurveKeysRotated"), timeout=120)
        after = secret(cluster, namespace, "probe-curve")["data"]
        assert after["server.key"] != before
        assert "next.key" not in after
        eventually(lambda: "next.key_secret" not in {p.name for p in (tmp_path / "mounted" / "server").iterdir()})
        port = int(handler.endpoint.rsplit(":", 1)[1])
        eventually(lambda: refused(port + 1))  # the handler stopped serving the next pair beside its port
        settled = {n: succeeded(get(cluster, namespace, "sched", f"beat-{n}")["status"]) for n in range(3)}
        eventually(
            lambda: all(
                succeeded(get(cluster, namespace, "sched", f"beat-{n}")["status"]) >= settled[n] + 3 for n in range(3)
            )
        )
        # The conductor reads the issued Secret again (every 30 s) and scrapes with the new pair.
        eventually(lambda: scraper.value("schedulezero_handler_up", handler=f"{namespace}/probe") == 1, timeout=60)
        after_rotation = scraper.value("schedulezero_handler_calls_total", handler=f"{namespace}/probe", method="tick")
        eventually(
            lambda: (
                (scraper.value("schedulezero_handler_calls_total", handler=f"{namespace}/probe", method="tick") or 0)
                > (after_rotation or 0)
            ),
            timeout=60,
        )
        # The old pair is served no more: a caller that still holds it is refused.
        old = tmp_path / "old"
        old.mkdir()
        (old / "server.key").write_text(base64.b64decode(before).decode())
        subprocess.run([processes.SCHEDULEZERO, "keys", "generate", "caller", "--out", str(old)], check=True)
        stale = [processes.SCHEDULEZERO, "call", handler.endpoint, "sys.health", "--timeout", "3"]
        stale += ["--curve-server-key", str(old / "server.key"), "--curve-client-key", str(old / "caller.key_secret")]
        assert subprocess.run(stale, capture_output=True, timeout=30).returncode != 0

    for n in range(3):
        status = get(cluster, namespace, "sched", f"beat-{n}")["status"]
        assert status["counters"]["failed"] == 0, status["runs"][:5]
        assert status["counters"]["missed"] == 0
        assert status["counters"]["skipped"] == 0
    runs = deliveries.by_run(deliveries.read(journal))
    for n in range(3):
        times = sorted(
            datetime.datetime.fromisoformat(when) for (schedule, when) in runs if schedule.endswith(f"beat-{n}")
        )
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert times
        assert all(gap == datetime.timedelta(seconds=1) for gap in gaps), gaps
    assert all(len(each) == 1 for each in runs.values())
    assert [each[0] for each in runs.values() if each[0].attempt != 1] == []  # no attempt failed and was retried
    assert all(each[0].answer == "run" for each in runs.values())


def test_two_replicas_issuing_at_once_agree_on_each_handler_s_keys(
    cluster: controlplane.Cluster, namespace: str, system_kubeconfigs: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """Both replicas see each new Handler at once and race to issue its Secret: the loser reads the winner's.
    The keys are re-read only every minute here, so a replica that gave up on a conflict would show."""
    prefix = f"race-{namespace}"
    replicas = [
        Operator(
            system_kubeconfigs["operator"], tmp_path / f"replica-{n}.log", "--namespace", namespace,
            lease_prefix=prefix,
            extra=("--default-security", "curve", "--key-check-interval", "60", "--identity", f"replica-{n}"),
        ).start()
        for n in range(2)
    ]  # fmt: skip
    names = [f"race-{n}" for n in range(6)]
    try:
        time.sleep(5)  # both watching
        apply(cluster, namespace, *(handler_doc(f"tcp://127.0.0.1:{n + 1}", name=name) for n, name in enumerate(names)))
        for name in names:
            condition = eventually(lambda name=name: encrypted(cluster, namespace, name), timeout=30)  # type: ignore[misc]
            assert (condition["status"], condition["reason"]) == ("True", "KeysIssued"), condition
        issued = events(cluster, namespace, "CurveKeysIssued")
        assert sorted(e["involvedObject"]["name"] for e in issued) == names  # one issue per Handler
    finally:
        for replica in replicas:
            replica.stop(signal.SIGKILL)
            print(replica.output()[-3000:])
