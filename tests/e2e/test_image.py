"""The images users run, built by ``tools/image/build.sh`` (``make test`` does), run as the chart runs them.

Not the source tree: the ScheduleZero image and the example vendor image,
each run as user 10001 with a read-only root filesystem (``tests/support/image.py``).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import tarfile
import time
from collections.abc import Iterator

import pytest
import yaml

from schedulezero_handler import client as client_
from tests.e2e.test_operator import apply, eventually, get, schedule_doc, succeeded
from tests.support import controlplane, image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def schedulezero_root() -> Iterator[pathlib.Path]:
    with image.rootfs(image.SCHEDULEZERO) as root:
        yield root


@pytest.fixture(scope="module")
def vendor_root() -> Iterator[pathlib.Path]:
    with image.rootfs(image.VENDOR) as root:
        yield root


@pytest.fixture
def vendor_handler(vendor_root: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[str]:
    """The vendor image's handler, serving on the host's loopback as its pod would on its IP."""
    endpoint = f"tcp://127.0.0.1:{controlplane.free_port()}"
    log = (tmp_path / "vendor.log").open("w")
    served = subprocess.Popen(
        image.command(vendor_root, "schedulezero", "handler", "acme-processor", "--bind", endpoint),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while "serving " not in (tmp_path / "vendor.log").read_text():
            assert served.poll() is None, (tmp_path / "vendor.log").read_text()
            assert time.monotonic() < deadline, "the vendor image's handler did not start"
            time.sleep(0.1)
        yield endpoint
    finally:
        served.terminate()
        served.wait(30)


def test_the_image_runs_as_its_user_on_a_read_only_root(schedulezero_root: pathlib.Path) -> None:
    helped = subprocess.run(image.command(schedulezero_root, "schedulezero", "--help"), capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: schedulezero")
    for command in ("operator", "conductor", "handler", "run-now"):
        assert command in helped.stdout
    probe = "id -u; touch /opt/schedulezero/x 2>&1; touch /tmp/ok && echo tmp-writable"
    shown = subprocess.run(image.command(schedulezero_root, "sh", "-c", probe), capture_output=True, text=True)
    assert shown.stdout.splitlines()[0] == "10001"
    assert "Read-only file system" in shown.stdout
    assert "tmp-writable" in shown.stdout
    config = json.loads(image.buildah("inspect", "--type", "image", image.SCHEDULEZERO))["OCIv1"]["config"]
    assert config["User"] == "10001:10001"  # runAsNonRoot can check it without a passwd lookup
    assert config["Entrypoint"] == ["schedulezero"]


async def test_the_vendor_image_serves_its_handler_to_the_host(vendor_handler: str) -> None:
    async with client_.Client() as calls:
        described = await calls.call(vendor_handler, "sys.describe", timeout=10)
        status = await calls.call(vendor_handler, "status", timeout=10)
    assert {"process_and_upload", "status"} <= {m["name"] for m in described["methods"]}
    assert isinstance(status, dict)


def self_contained(kubeconfig: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """The kubeconfig with its CA inlined: only this directory is mounted into the image."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        authority = cluster["cluster"].pop("certificate-authority", None)
        if authority:
            data = base64.b64encode(pathlib.Path(authority).read_bytes()).decode()
            cluster["cluster"]["certificate-authority-data"] = data
    directory.mkdir()
    (directory / "config").write_text(yaml.safe_dump(config))
    os.chmod(directory / "config", 0o644)  # readable by the image's user
    return directory


def test_the_operator_from_the_image_runs_a_schedule_on_the_vendor_handler(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    schedulezero_root: pathlib.Path,
    vendor_handler: str,
    tmp_path: pathlib.Path,
) -> None:
    kube = self_contained(system_kubeconfigs["operator"], tmp_path / "kube")
    arguments = ["operator", "--namespace", namespace, "--metrics-port", "0", "--liveness-port", "0",
                 "--lease-prefix", f"img-{namespace}"]  # fmt: skip
    log = (tmp_path / "operator.log").open("w")
    kubeconfig, binds = {"KUBECONFIG": "/tmp/kube/config"}, {str(kube): "/tmp/kube"}
    inside = image.command(schedulezero_root, "schedulezero", *arguments, env=kubeconfig, binds=binds)
    operator = subprocess.Popen(
        inside,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        handler = {"apiVersion": "schedulezero.io/v1alpha1", "kind": "Handler", "metadata": {"name": "probe"},
                   "spec": {"endpoint": vendor_handler}}  # fmt: skip
        apply(cluster, namespace, handler, schedule_doc("from-image", schedule="@every 1s", method="status"))
        eventually(lambda: succeeded(get(cluster, namespace, "sched", "from-image")["status"]) >= 2, timeout=90)
    finally:
        operator.terminate()
        operator.wait(30)
    assert operator.returncode == 0, (tmp_path / "operator.log").read_text()[-3000:]


@pytest.mark.parametrize("name", [image.SCHEDULEZERO, image.VENDOR])
def test_no_key_or_secret_in_any_layer_and_the_size(name: str, tmp_path: pathlib.Path) -> None:
    """Every layer, not only the final filesystem: a file added in one layer and deleted in a later one is
    still shipped."""
    image.buildah("push", name, f"oci:{tmp_path / 'oci'}")
    found, layers = [], 0
    for blob in (tmp_path / "oci" / "blobs" / "sha256").iterdir():
        if not tarfile.is_tarfile(blob):  # the manifest and the config are JSON, not layers
            continue
        layers += 1
        with tarfile.open(blob) as layer:
            for member in layer:
                if not member.isfile() or member.size > 1024 * 1024:
                    continue
                content = layer.extractfile(member)
                if content is not None and _looks_secret(pathlib.PurePosixPath(member.name), content.read()):
                    found.append(f"{blob.name[:12]}: {member.name}")
    assert layers >= 2
    assert not found, found
    # ...and the check would see one:
    assert _looks_secret(pathlib.PurePosixPath("etc/keys/client.key_secret"), b"")
    assert _looks_secret(pathlib.PurePosixPath("opt/app/key.pem"), b"-----BEGIN RSA PRIVATE KEY-----\n")
    print(f"{name}: {image.buildah('images', '--format', '{{.Size}}', name)} in {layers} layers")


def _looks_secret(path: pathlib.PurePosixPath, content: bytes) -> bool:
    """A private key, or a file named as keys are (CURVE secrets, SSH keys); packages' own test fixtures aside."""
    if path.suffix == ".key_secret" or path.name.startswith(("id_rsa", "id_ed25519")):
        return True
    return b"PRIVATE KEY-----" in content and not {"test", "tests"} & set(path.parts)
