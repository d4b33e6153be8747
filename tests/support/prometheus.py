"""A real Prometheus (Debian's package) on a free loopback port, with a generated config."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import yaml

from tests.support import controlplane


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    def __init__(self, workdir: pathlib.Path, jobs: dict[str, str] | dict[str, list[str]]) -> None:
        """``jobs``: job name -> host:port of a /metrics endpoint, or a list of them (one job, several pods)."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not installed (Debian package 'prometheus'; make test installs it)")
        self.port = controlplane.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target] if isinstance(target, str) else target}]}
                for job, target in jobs.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise PrometheusError(f"prometheus did not become ready:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.2)

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query's result vector; a bad expression raises with Prometheus' own message."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{expression!r}: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
