"""A port already taken stops the operator and the conductor at once, with one line and exit code 2.

As the handler does: a traceback and a start-up retried every minute would
leave a pod Running that serves nothing, and bury the one line that says why.
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support import processes


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


COMMANDS = {
    "operator-metrics": (["operator", "-n", "x", "--liveness-port", "0", "--metrics-port", "{port}"], "/metrics"),
    "operator-liveness": (["operator", "-n", "x", "--metrics-port", "0", "--liveness-port", "{port}"], "/healthz"),
    "conductor-zmq": (["conductor", "--metrics-port", "0", "--bind", "tcp://127.0.0.1:{port}"], "bind"),
    "conductor-metrics": (["conductor", "--bind", "tcp://127.0.0.1:0", "--metrics-port", "{port}"], "/metrics"),
    "conductor-health": (
        ["conductor", "--bind", "tcp://127.0.0.1:0", "--metrics-port", "0", "--http-port", "{port}"],
        "/healthz and /readyz",
    ),
    "local-metrics": (["run", "--local", "{dir}", "--metrics-port", "{port}"], "/metrics"),
}


@pytest.mark.parametrize("case", sorted(COMMANDS))
def test_a_taken_port_is_one_line_and_exit_code_2(case: str, taken: int, tmp_path: pathlib.Path) -> None:
    args, what = COMMANDS[case]
    command = [processes.SCHEDULEZERO, *(a.format(port=taken, dir=tmp_path) for a in args)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert time.monotonic() - started < 15  # at once, not after a retry
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("schedulezero: cannot "), line
    assert what in line
    assert str(taken) in line
    assert "Address already in use" in line
