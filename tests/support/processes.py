"""Real handler processes, started with the ``schedulezero handler`` command."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from tests.support import controlplane

SCHEDULEZERO = str(pathlib.Path(sys.executable).parent / "schedulezero")


@dataclasses.dataclass
class HandlerProcess:
    endpoint: str
    popen: subprocess.Popen[str]
    log: pathlib.Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def stop(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode


def start_handler(
    target: str,
    log_dir: pathlib.Path,
    *args: str,
    port: int | None = None,
    timeout: float = 20.0,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
) -> HandlerProcess:
    """Starts a handler on ``host`` (a loopback address: one per pod of a Service) and waits until it serves."""
    port = port or controlplane.free_port()
    endpoint = f"tcp://{host}:{port}"
    log = log_dir / f"handler-{port}-{time.monotonic_ns()}.log"
    out = log.open("w")
    popen = subprocess.Popen(
        [SCHEDULEZERO, "handler", target, "--bind", endpoint, "--app-dir", str(controlplane.REPO), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    process = HandlerProcess(endpoint, popen, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "serving " in process.output():
            return process
        if popen.poll() is not None:
            raise RuntimeError(f"handler exited with {popen.returncode}:\n{process.output()}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"handler not serving after {timeout} s:\n{process.output()}")


@contextlib.contextmanager
def running_handler(
    target: str, log_dir: pathlib.Path, *args: str, port: int | None = None
) -> Iterator[HandlerProcess]:
    process = start_handler(target, log_dir, *args, port=port)
    try:
        yield process
    finally:
        process.kill()


def executions(endpoint: str, *, prefix: str = "") -> collections.Counter[tuple[str, str]]:
    """How often a ProbeHandler executed each (Schedule, nominal time) of the Schedules named ``prefix...``.

    Asked through ``schedulezero call``, a process of its own, so that sync callers need no event loop."""
    command = [SCHEDULEZERO, "call", endpoint, "ticks_seen", "--timeout", "60"]
    ticks = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return collections.Counter((t["schedule"], t["scheduled"]) for t in ticks if t["schedule"].startswith(prefix))


def curve_handler_args(directory: pathlib.Path, *clients: str, stranger: bool = False) -> tuple[str, ...]:
    """Key pairs in ``directory`` (``schedulezero keys generate``): the handler's ``server`` pair and one per
    client, of which the handler accepts ``clients`` (and not ``stranger``); returns the handler's CURVE flags."""
    names = ("server", *clients, *(("stranger",) if stranger else ()))
    for name in names:
        subprocess.run(
            [SCHEDULEZERO, "keys", "generate", name, "--out", str(directory)], check=True, capture_output=True
        )
    authorized = directory / "authorized"
    authorized.mkdir()
    for name in clients:
        (authorized / f"{name}.key").write_text((directory / f"{name}.key").read_text())
    return ("--curve-secret-key", str(directory / "server.key_secret"), "--curve-authorized-keys", str(authorized))
