"""Shared by the benchmarks: server processes, percentiles, and markdown tables.

Every server a benchmark measures runs as its own process, as in production,
and is stopped by its process id when the benchmark ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import os
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from types import FrameType

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
SCHEDULEZERO = str(pathlib.Path(sys.executable).parent / "schedulezero")
READY_MARKER = "serving "
"""What every server process prints once it accepts requests (``schedulezero handler`` does too)."""


@dataclasses.dataclass
class ServerProcess:
    """A server started by a benchmark; its output goes to a log file shown on failure."""

    name: str
    popen: subprocess.Popen[bytes]
    log: pathlib.Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def stop_on_sigterm() -> None:
    """Makes SIGTERM exit like Ctrl-C does, through ``finally`` blocks, so that the servers are stopped too."""

    def exit_now(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_now)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_ready(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if READY_MARKER in server.output():
            return
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.popen.returncode}:\n{server.output()}")
        time.sleep(0.02)
    raise RuntimeError(f"{server.name} not serving after {timeout} s:\n{server.output()}")


@contextlib.contextmanager
def serving(name: str, argv: Sequence[str], *, timeout: float = 60.0) -> Iterator[ServerProcess]:
    """Runs ``argv`` until the block ends; ready once it prints ``READY_MARKER``."""
    with tempfile.TemporaryDirectory(prefix="schedulezero-bench-") as directory:
        log = pathlib.Path(directory) / "server.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        server = ServerProcess(name, popen, log)
        try:
            _wait_ready(server, timeout)
            yield server
        finally:
            server.stop()


def handler_argv(target: str, endpoint: str, app_dir: pathlib.Path, *options: str) -> list[str]:
    """``schedulezero handler`` as production runs it, logging only warnings."""
    return [
        SCHEDULEZERO,
        "handler",
        target,
        "--bind",
        endpoint,
        "--app-dir",
        str(app_dir),
        "--log-level",
        "WARNING",
        *options,
    ]


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q ≤ 100) of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def environment(*packages: str) -> str:
    """One line naming the machine and the versions that matter to the numbers."""
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)
    return f"Python {platform.python_version()}, {versions}, {os.cpu_count()} CPUs ({platform.machine()})"
