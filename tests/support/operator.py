"""``schedulezero operator`` as a process."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import uuid

from tests.support import processes

ELECTION = ("--lease-duration", "6", "--renew-deadline", "4", "--retry-period", "1")
"""Lease timing in the tests: client-go's 15/10/2 s scaled down, so failovers take seconds."""


class Operator:
    """``schedulezero operator`` as a process.

    Each test's operators get Leases of their own (``lease_prefix``), so a replica killed
    by one test holds nothing another test's operators wait for.
    """

    def __init__(
        self,
        kubeconfig: pathlib.Path,
        log: pathlib.Path,
        *scope: str,
        metrics_port: int = 0,
        lease_prefix: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig, self.log, self.scope = kubeconfig, log, scope
        self.metrics_port = metrics_port
        self.lease_prefix = lease_prefix or f"sz-{uuid.uuid4().hex[:8]}"
        self.extra = extra
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
                    "--lease-prefix",
                    self.lease_prefix,
                    *ELECTION,
                    *self.extra,
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
