"""``schedulezero operator`` as a process."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess

from tests.support import processes


class Operator:
    """``schedulezero operator`` as a process."""

    def __init__(self, kubeconfig: pathlib.Path, log: pathlib.Path, *scope: str, metrics_port: int = 0) -> None:
        self.kubeconfig, self.log, self.scope = kubeconfig, log, scope
        self.metrics_port = metrics_port
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [
                    processes.SCHEDULEZERO,
                    "operator",
                    *self.scope,
                    "--metrics-port",
                    str(self.metrics_port),
                    "--liveness-port",
                    "0",
                    "--status-interval",
                    "0.5",
                    "--probe-interval",
                    "1",
                    "--event-interval",
                    "5",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            )
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")
