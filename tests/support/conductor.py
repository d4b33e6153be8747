"""The conductor as a process, and reading its /metrics."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support import controlplane, processes


@dataclasses.dataclass
class ConductorProcess:
    endpoint: str
    metrics_url: str
    popen: subprocess.Popen[bytes]
    log: pathlib.Path

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by name and sorted labels."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        wanted = tuple(sorted(labels.items()))
        for (sample, sample_labels), value in self.samples().items():
            if sample == name and all(item in sample_labels for item in wanted):
                return value
        return None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_conductor(
    log_dir: pathlib.Path, *args: str, config: pathlib.Path | None = None, env: dict[str, str] | None = None
) -> ConductorProcess:
    port, metrics_port = controlplane.free_port(), controlplane.free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log = log_dir / f"conductor-{port}.log"
    command = [processes.SCHEDULEZERO, "conductor", "--bind", endpoint, "--metrics-port", str(metrics_port)]
    command += ["--interval", "0.5", "--timeout", "2", *args]
    if config is not None:
        command += ["--config", str(config)]
    with log.open("wb") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    process = ConductorProcess(endpoint, f"http://127.0.0.1:{metrics_port}/metrics", popen, log)
    deadline = time.monotonic() + 20
    while "serving Conductor" not in log.read_text():
        if popen.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"conductor did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process
