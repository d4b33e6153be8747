"""The service catalog: a vendor's handler package, pip-installed by a customer and scheduled by them.

examples/acme-processor-handler goes into a fresh virtualenv beside the
handler runtime alone (no operator dependencies), is served by name through the
schedulezero.handlers entry-point group, and a Schedule in the API server runs
it; its upload lands on a real HTTP endpoint standing in for ACME's ingest API.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support import controlplane
from tests.support.operator import Operator
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

REPO = controlplane.REPO
PACKAGE = REPO / "examples" / "acme-processor-handler"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Copies of the project and of the package: pip builds in the source tree, which stays clean."""
    root = tmp_path_factory.mktemp("sources")
    skip = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "tests", "bench", "examples", "charts")
    project = shutil.copytree(REPO, root / "schedulezero", ignore=skip)
    package = shutil.copytree(PACKAGE, root / "acme-processor-handler", ignore=skip)
    return str(project), str(package)


def new_venv(path: pathlib.Path) -> pathlib.Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin"


def pip(bin_dir: pathlib.Path, *args: str) -> None:
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]


class Ingest(http.server.ThreadingHTTPServer):
    """ACME's ingest API, as far as the handler can tell: it keeps what is posted."""

    def __init__(self) -> None:
        self.received: list[tuple[str | None, dict[str, Any]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.headers.get("Authorization"), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/summaries"


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    server = Ingest()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def serving(command: list[str], log: pathlib.Path, port: int) -> Iterator[str]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "serving" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def test_a_customer_installs_and_schedules_a_catalog_handler(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    ingest: Ingest,
    sources: tuple[str, str],
    tmp_path: pathlib.Path,
) -> None:
    bin_dir = new_venv(tmp_path / "venv")
    pip(bin_dir, *sources)  # the handler runtime, and the vendor's package
    light = subprocess.run([str(bin_dir / "python"), "-c", "import kopf"], capture_output=True)
    assert light.returncode != 0  # a handler install never carries the operator's dependencies

    data = tmp_path / "data" / "daily"
    data.mkdir(parents=True)
    (data / "orders.csv").write_text("id,total\n1,9.50\n2,12.00\n")
    (data / "refunds.csv").write_text("id,total\n7,3.25\n")
    config = tmp_path / "acme.yaml"
    config.write_text(
        yaml.safe_dump({"endpoint": ingest.url, "api_key": "customer-key", "allowed_roots": [str(tmp_path / "data")]})
    )
    port = controlplane.free_port()
    command = [str(bin_dir / "schedulezero"), "handler", "acme-processor", "--bind", f"tcp://127.0.0.1:{port}"]
    command += ["--config", str(config)]
    operator = Operator(system_kubeconfigs["operator"], tmp_path / "operator.log", "--namespace", namespace)
    with serving(command, tmp_path / "acme.log", port) as endpoint:
        operator.start()
        try:
            documents = [
                {"apiVersion": "schedulezero.io/v1alpha1", "kind": "Handler", "metadata": {"name": "acme-processor"},
                 "spec": {"endpoint": endpoint}},
                {"apiVersion": "schedulezero.io/v1alpha1", "kind": "Schedule", "metadata": {"name": "daily-upload"},
                 "spec": {"handler": "acme-processor", "method": "process_and_upload",
                          "params": {"data_source": str(data)}, "schedule": "@every 2s"}},
            ]  # fmt: skip
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))

            def status(kind: str, name: str) -> dict[str, Any]:
                got = json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
                return dict(got.get("status") or {})

            eventually(lambda: status("sched", "daily-upload").get("counters", {}).get("succeeded", 0) >= 1)
            eventually(lambda: status("hdl", "acme-processor").get("version"))
            handler = status("hdl", "acme-processor")
        finally:
            assert operator.stop() == 0, operator.output()[-3000:]

    assert handler["version"] == "1.0.0"
    assert {"process_and_upload", "status"} <= {m["name"] for m in handler["methods"]}
    authorization, summary = ingest.received[0]
    assert authorization == "Bearer customer-key"
    expected = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(data.iterdir()))).hexdigest()
    assert summary["files"] == 2
    assert summary["lines"] == 5
    assert summary["sha256"] == expected
    assert summary["scheduled_time"] is not None  # current_call(): the run's nominal time


@pytest.fixture(scope="module")
def image_venv(sources: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A virtualenv laid out as the image's: the project, prepared by tools/image/packages.py as the Dockerfile does.

    Its ``packages`` directory stands for the handler chart's volume.
    """
    root = tmp_path_factory.mktemp("image")
    bin_dir = new_venv(root / "venv")
    pip(bin_dir, sources[0])
    script = REPO / "tools" / "image" / "packages.py"
    subprocess.run([str(bin_dir / "python"), str(script), str(root / "packages")], check=True)
    return root


def test_the_handler_charts_packages_install_beside_the_image(
    image_venv: pathlib.Path, sources: tuple[str, str], tmp_path: pathlib.Path
) -> None:
    """What the handler chart's `packages` init container does: a prefix on a volume, the image's versions."""
    bin_dir, prefix = image_venv / "venv" / "bin", image_venv / "packages"
    pip(bin_dir, f"--prefix={prefix}", f"--constraint={image_venv / 'venv' / 'constraints.txt'}", sources[1])

    installed = sorted(p.name.split("-")[0] for p in prefix.rglob("*.dist-info"))
    assert installed == ["acme_processor_handler"]  # schedulezero, pyzmq... came from the image
    port = controlplane.free_port()
    command = [str(bin_dir / "schedulezero"), "handler", "acme-processor", "--bind", f"tcp://127.0.0.1:{port}"]
    with serving(command, tmp_path / "acme.log", port) as endpoint:
        done = subprocess.run(
            [str(bin_dir / "schedulezero"), "call", endpoint, "status"], capture_output=True, text=True, check=True
        )
    assert json.loads(done.stdout)["uploads"] == 0


def test_a_package_needing_other_versions_than_the_image_fails_to_install(
    image_venv: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Rather than being shadowed by the image's copies at run time."""
    needy = tmp_path / "needy"
    (needy / "needy").mkdir(parents=True)
    (needy / "needy" / "__init__.py").write_text("")
    (needy / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "needy"\nversion = "1"\ndependencies = ["schedulezero>=99"]\n'
    )
    done = subprocess.run(
        [str(image_venv / "venv" / "bin" / "python"), "-m", "pip", "install", f"--prefix={tmp_path / 'p'}",
         f"--constraint={image_venv / 'venv' / 'constraints.txt'}", str(needy)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0
    assert "needy 1 depends on schedulezero>=99" in done.stdout + done.stderr
