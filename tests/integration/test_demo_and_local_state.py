"""``schedulezero demo`` as a new user sees it, and where ``schedulezero run --local DIR`` keeps its state."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import textwrap
import time

import pytest

from schedulezero_operator import local
from tests.support import controlplane, processes

VENV_BIN = pathlib.Path(processes.SCHEDULEZERO).parent


def without_the_venv() -> str:
    """A PATH on which ``schedulezero`` is not found, as for a user who has not activated the virtualenv."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if pathlib.Path(p) != VENV_BIN)


def test_the_demo_says_each_failed_attempt_in_one_line_and_suggests_a_command_that_works(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "demo.log"
    env = {**os.environ, "PATH": without_the_venv(), "XDG_STATE_HOME": str(tmp_path / "state")}
    started_as = os.path.relpath(processes.SCHEDULEZERO, controlplane.REPO)  # as `make demo` starts it
    with out.open("wb") as log:
        demo = subprocess.Popen(
            [started_as, "demo", "--metrics-port", "0"],
            cwd=controlplane.REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and "default/flaky-job" not in out.read_text():
            time.sleep(0.2)
        hint = re.search(r"^try: (.*)$", out.read_text(), flags=re.MULTILINE)
        assert hint, out.read_text()
        tried = subprocess.run(
            shlex.split(hint[1]), cwd=controlplane.REPO, env=env, capture_output=True, text=True, timeout=30
        )
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(20)
    text = out.read_text()
    assert demo.returncode == 0, text
    assert tried.returncode == 0, tried.stderr
    assert '"handlers"' in tried.stdout  # collect_metrics answered

    assert "Traceback" not in text
    failures = [line for line in text.splitlines() if "transient failure" in line]
    assert len(failures) >= 2, text  # the flaky job fails twice per run, then succeeds
    assert all(line.startswith("handler ERROR: flaky") and "(traceback in handler.log)" in line for line in failures)
    handler_log = tmp_path / "state" / "schedulezero" / "demo" / "handler.log"
    assert handler_log.read_text().count("Traceback (most recent call last):") >= len(failures)

    last = text.strip().splitlines()[-1]
    assert last.startswith("stopped")
    named = [pathlib.Path(word) for word in last.split() if word.startswith("/")]
    assert all(path.exists() for path in named), f"the exit message names what no longer exists: {last}"


def test_local_mode_keeps_its_state_out_of_the_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that the directory stays what you would ``kubectl apply -f``; the state is keyed by its absolute path."""
    directories = [tmp_path / "a" / "schedules", tmp_path / "b" / "schedules"]
    schedule = """\
        apiVersion: schedulezero.io/v1alpha1
        kind: Schedule
        metadata: {name: tick}
        spec: {handler: nowhere, method: tick, schedule: "@every 1s"}
        """
    state_home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    env = {**os.environ}
    outputs = []
    for directory in directories:
        directory.mkdir(parents=True)
        (directory / "tick.yaml").write_text(textwrap.dedent(schedule))
        running = subprocess.Popen(
            [processes.SCHEDULEZERO, "run", "--local", str(directory), "--metrics-port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(2.5)
        running.send_signal(signal.SIGTERM)
        output, _ = running.communicate(timeout=20)
        assert running.returncode == 0, output
        outputs.append(output)
        assert sorted(p.name for p in directory.iterdir()) == ["tick.yaml"]

    saved = sorted((state_home / "schedulezero" / "local").iterdir())
    assert len(saved) == 2  # one state per directory, though both are called "schedules"
    for directory, output in zip(directories, outputs, strict=True):
        path = local.default_state_path(directory)
        assert path.parent == state_home / "schedulezero" / "local"
        assert path.name.startswith("schedules-")
        assert f"status saved in {path}" in output
        assert '"default/tick"' in path.read_text()


def test_the_state_home_is_the_users_when_xdg_state_home_is_unset_or_relative(
    tmp_path: pathlib.Path,
) -> None:
    for value in (None, "relative/state"):
        env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"} | {"HOME": str(tmp_path)}
        if value is not None:
            env["XDG_STATE_HOME"] = value
        found = subprocess.run(
            [str(VENV_BIN / "python"), "-c", "from schedulezero_operator import local; print(local.state_home())"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert found.stdout.strip() == str(tmp_path / ".local" / "state")


def test_a_state_file_left_in_the_directory_is_moved_out_and_its_history_kept(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "schedules"
    directory.mkdir()
    (directory / "tick.yaml").write_text("")
    old = directory / local.OLD_STATE_FILE
    entry = {"uid": "u-1", "created": "2026-01-01T00:00:00+00:00"}
    old.write_text(json.dumps({"version": 1, "schedules": {"default/tick": entry}}))
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    running = subprocess.Popen(
        [processes.SCHEDULEZERO, "run", "--local", str(directory), "--metrics-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.5)
    running.send_signal(signal.SIGTERM)
    output, _ = running.communicate(timeout=20)
    assert not old.exists()
    moved = tmp_path / "state" / "schedulezero" / "local"
    [path] = moved.iterdir()
    assert '"u-1"' in path.read_text()
    assert f"moved the state file {old} out of the directory, to {path}" in output
