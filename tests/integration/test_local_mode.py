"""Local mode: ``schedulezero run --local DIR`` against a real handler process."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import pathlib
import signal
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from schedulezero_handler import client as client_
from schedulezero_operator import engine as engine_
from schedulezero_operator import local
from tests.support import processes

PROBE = "tests.support.handlers:ProbeHandler"


@pytest.fixture
def handler(tmp_path: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path) as process:
        yield process


@pytest.fixture
async def client() -> AsyncIterator[client_.Client]:
    async with client_.Client() as c:
        yield c


def write(directory: pathlib.Path, name: str, text: str) -> None:
    (directory / name).write_text(textwrap.dedent(text))


def handler_yaml(endpoint: str) -> str:
    return f"""\
        apiVersion: schedulezero.io/v1alpha1
        kind: Handler
        metadata: {{name: probe}}
        spec: {{endpoint: "{endpoint}"}}
        """


def schedule_yaml(name: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec), "          ")
    return f"""\
        apiVersion: schedulezero.io/v1alpha1
        kind: Schedule
        metadata: {{name: {name}}}
        spec:
{body}"""


def start_local(directory: pathlib.Path, state: pathlib.Path, log: pathlib.Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                processes.SCHEDULEZERO,
                "run",
                "--local",
                str(directory),
                "--state",
                str(state),
                "--metrics-port",
                "0",
                "--status-interval",
                "0.2",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def ticks(client: client_.Client, endpoint: str, schedule: str) -> list[dict[str, Any]]:
    return [t for t in await client.call(endpoint, "ticks_seen") if t["schedule"] == f"default/{schedule}"]


async def test_sigkill_and_restart_catch_up_without_running_anything_twice(
    tmp_path: pathlib.Path, handler: processes.HandlerProcess, client: client_.Client
) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    write(schedules, "handler.yaml", handler_yaml(handler.endpoint))
    spec = 'handler: probe\nmethod: tick\nschedule: "@every 1s"\ncatchUpPolicy: All\nconcurrencyPolicy: Allow\n'
    write(schedules, "tick.yaml", schedule_yaml("tick", spec))
    state, log = tmp_path / "state.json", tmp_path / "local.log"

    first = start_local(schedules, state, log)
    await asyncio.sleep(3.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = await ticks(client, handler.endpoint, "tick")
    assert len(before) >= 2
    await asyncio.sleep(3.0)  # down: about three runs are missed

    second = start_local(schedules, state, log)
    await asyncio.sleep(3.5)
    second.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.wait, 15) == 0
    seen = await ticks(client, handler.endpoint, "tick")

    times = [datetime.datetime.fromisoformat(t["scheduled"]) for t in seen]
    assert len(times) == len(set(times)), "a run was executed twice at the handler"
    gaps = [(b - a).total_seconds() for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
    assert gaps
    assert max(gaps) == pytest.approx(1.0, abs=0.01)
    assert len(seen) >= len(before) + 5
    saved = json.loads(state.read_text())["schedules"]["default/tick"]["status"]
    assert saved["counters"]["succeeded"] >= len(seen) - 1  # the status carried over the crash
    assert saved["counters"]["missed"] == 0


async def test_bad_files_are_reported_and_the_rest_keep_running(
    tmp_path: pathlib.Path, handler: processes.HandlerProcess, client: client_.Client
) -> None:
    directory = tmp_path / "schedules"
    directory.mkdir()
    write(directory, "handler.yaml", handler_yaml(handler.endpoint))
    write(directory, "broken.yaml", "apiVersion: schedulezero.io/v1alpha1\nkind: Schedule\nspec: [unclosed\n")
    probe = "handler: probe\nmethod: tick\n"
    write(directory, "typo.yaml", schedule_yaml("typo", probe + 'schedule: "@every 1s"\ntimeoutSecs: 5\n'))
    write(directory, "cron.yaml", schedule_yaml("cron", probe + 'schedule: "0 25 * * *"\n'))
    write(directory, "zone.yaml", schedule_yaml("zone", probe + 'schedule: "@daily"\ntimeZone: Mars/Olympus\n'))
    write(directory, "orphan.yaml", schedule_yaml("orphan", 'handler: nowhere\nmethod: tick\nschedule: "@every 1s"\n'))
    write(directory, "good.yaml", schedule_yaml("good", probe + 'schedule: "@every 1s"\n'))
    method = 'handler: probe\nmethod: nope\nschedule: "@hourly"\n'
    write(directory, "method.yaml", schedule_yaml("method", method))
    params = 'handler: probe\nmethod: add\nparams: {b: 1}\nschedule: "@hourly"\n'
    write(directory, "params.yaml", schedule_yaml("params", params))

    output = io.StringIO()
    mode = local.LocalMode(
        directory,
        state_path=tmp_path / "state.json",
        terminal=local.Terminal(output),
        settings=engine_.EngineSettings(status_interval=0.2),
    )
    stop = asyncio.Event()
    running = asyncio.ensure_future(mode.run(stop))
    await asyncio.sleep(3.5)
    stop.set()
    await running

    text = output.getvalue()
    assert "broken.yaml: not valid YAML" in text
    assert "typo.yaml: Schedule default/typo is invalid" in text
    assert "'timeoutSecs' was unexpected" in text
    assert "hour field '25'" in text
    assert "Mars/Olympus" in text
    assert len(await ticks(client, handler.endpoint, "good")) >= 2  # the valid Schedule ran regardless
    # Said once each, as soon as the handler's probe shows what it exposes.
    assert (
        text.count("method.yaml: Schedule default/method: MethodNotFound: Handler 'probe' does not expose 'nope'") == 1
    )
    assert text.count("params.yaml: Schedule default/params: InvalidParams: add: spec.params lacks") == 1
    assert text.count("orphan.yaml: Schedule default/orphan: HandlerNotFound") == 1
    saved = json.loads((tmp_path / "state.json").read_text())["schedules"]
    orphan = saved["default/orphan"]["status"]
    assert orphan["conditions"][0]["reason"] == "HandlerNotFound"
    assert orphan["runs"][0]["error"]["type"] == "HandlerNotFound"  # every run recorded, none lost
    assert saved["default/cron"]["status"]["conditions"][0]["reason"] == "InvalidSchedule"
    assert "default/typo" not in saved


async def test_files_added_changed_and_removed_are_picked_up(
    tmp_path: pathlib.Path, handler: processes.HandlerProcess, client: client_.Client
) -> None:
    directory = tmp_path / "schedules"
    directory.mkdir()
    write(directory, "handler.yaml", handler_yaml(handler.endpoint))
    output = io.StringIO()
    mode = local.LocalMode(
        directory, state_path=tmp_path / "state.json", terminal=local.Terminal(output), rescan_interval=0.2
    )
    stop = asyncio.Event()
    running = asyncio.ensure_future(mode.run(stop))
    try:
        await asyncio.sleep(0.5)
        write(directory, "late.yaml", schedule_yaml("late", 'handler: probe\nmethod: tick\nschedule: "@every 1s"\n'))
        await asyncio.sleep(2.5)
        assert len(await ticks(client, handler.endpoint, "late")) >= 1
        (directory / "late.yaml").unlink()
        await asyncio.sleep(0.8)
        count = len(await ticks(client, handler.endpoint, "late"))
        await asyncio.sleep(2.0)
        assert len(await ticks(client, handler.endpoint, "late")) == count
        assert "removed default/late" in output.getvalue()
    finally:
        stop.set()
        await running


def test_demo_command_runs_the_demo(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "demo.log"
    with out.open("wb") as log:
        demo = subprocess.Popen(
            [processes.SCHEDULEZERO, "demo", "--metrics-port", "0"],
            cwd=processes.controlplane.REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "flaky-job" not in out.read_text():
            time.sleep(0.2)
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(20)
    text = out.read_text()
    assert demo.returncode == 0, text
    assert "default/greet-often              Succeeded" in text
    assert "default/flaky-job                Succeeded" in text
    assert "3 att." in text  # it failed twice and was retried


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def test_metrics_endpoint_exports_the_operator_metrics(
    tmp_path: pathlib.Path, handler: processes.HandlerProcess
) -> None:
    directory = tmp_path / "schedules"
    directory.mkdir()
    write(directory, "handler.yaml", handler_yaml(handler.endpoint))
    write(directory, "tick.yaml", schedule_yaml("tick", 'handler: probe\nmethod: tick\nschedule: "@every 1s"\n'))
    write(directory, "fail.yaml", schedule_yaml("fail", 'handler: probe\nmethod: nope\nschedule: "@every 1s"\n'))
    paused = 'handler: probe\nmethod: tick\nschedule: "@every 1s"\nsuspend: true\n'
    write(directory, "paused.yaml", schedule_yaml("paused", paused))
    mode = local.LocalMode(directory, state_path=tmp_path / "state.json", terminal=local.Terminal(io.StringIO()))
    port = processes.controlplane.free_port()
    mode.engine.metrics.serve(port=port, address="127.0.0.1")
    stop = asyncio.Event()
    running = asyncio.ensure_future(mode.run(stop))
    await asyncio.sleep(2.5)
    try:
        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
    finally:
        stop.set()
        await running
    assert 'schedulezero_schedule_runs_total{namespace="default",outcome="Succeeded",schedule="tick"}' in text
    assert 'schedulezero_schedule_runs_total{namespace="default",outcome="Failed",schedule="fail"}' in text
    assert 'schedulezero_rpc_calls_total{code="MethodNotFound",handler="default/probe"}' in text
    assert 'schedulezero_schedule_suspended{namespace="default",schedule="tick"}' not in text  # only while suspended
    for name in (
        'schedulezero_schedule_run_duration_seconds_bucket{handler="default/probe",le="0.005",method="tick"}',
        "schedulezero_schedule_fire_lateness_seconds_bucket",
        'schedulezero_schedule_next_run_timestamp_seconds{namespace="default",schedule="tick"}',
        'schedulezero_schedule_last_success_timestamp_seconds{namespace="default",schedule="tick"}',
        'schedulezero_schedule_suspended{namespace="default",schedule="paused"} 1',
        "schedulezero_rpc_call_duration_seconds_bucket",
        "schedulezero_build_info{",
        "schedulezero_status_writes_total",
    ):
        assert name in text


LAUGHS = """\
apiVersion: schedulezero.io/v1alpha1
kind: Schedule
metadata: {name: laughs}
spec:
  handler: probe
  method: echo
  schedule: "@every 1s"
  params:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


async def test_files_that_cannot_become_schedules_cost_only_themselves(
    tmp_path: pathlib.Path, handler: processes.HandlerProcess, client: client_.Client
) -> None:
    """Each of these once stopped local mode, or a Schedule, or the connection every Schedule shares."""
    directory = tmp_path / "schedules"
    directory.mkdir()
    write(directory, "handler.yaml", handler_yaml(handler.endpoint))
    probe = 'handler: probe\nmethod: echo\nschedule: "@every 1s"\n'
    latin1 = schedule_yaml("cafe", probe + "params: {value: caf\xe9}\n")
    (directory / "latin1.yaml").write_bytes(textwrap.dedent(latin1).encode("latin-1"))
    write(directory, "date.yaml", schedule_yaml("date", probe + "params: {value: 2026-01-01}\n"))
    write(directory, "laughs.yaml", LAUGHS)
    write(directory, "large.yaml", schedule_yaml("large", probe + f"params: {{value: {'x' * 70_000}}}\n"))
    slash = schedule_yaml("a/b", 'handler: probe\nmethod: tick\nschedule: "@every 1s"\n')
    write(directory, "slash.yaml", slash)
    write(directory, "good.yaml", schedule_yaml("good", 'handler: probe\nmethod: tick\nschedule: "@every 1s"\n'))

    output = io.StringIO()
    mode = local.LocalMode(
        directory, state_path=tmp_path / "state.json", terminal=local.Terminal(output), rescan_interval=0.2
    )
    stop = asyncio.Event()
    running = asyncio.ensure_future(mode.run(stop))
    try:
        await asyncio.sleep(1.5)
        (directory / "later.yaml").write_bytes(b"apiVersion: schedulezero.io/v1alpha1\nkind: Schedule # caf\xe9\n")
        await asyncio.sleep(2.0)
        assert not running.done()
    finally:
        stop.set()
        await running
    text = output.getvalue()
    assert f"{directory / 'latin1.yaml'}: not UTF-8 text (byte 0xe9 at offset " in text
    assert f"{directory / 'later.yaml'}: not UTF-8 text (byte 0xe9 at offset 57)" in text
    assert "Schedule default/date is invalid: spec.params.value is a date, which JSON cannot represent" in text
    assert f"{directory / 'laughs.yaml'}: not valid YAML: its aliases expand to more than 100000 nodes" in text
    assert "Schedule default/large: spec.params is 70012 bytes of JSON, more than the 65536 allowed" in text
    assert "Schedule metadata.name 'a/b' must be lowercase letters, digits, '-' and '.'" in text
    assert len(await ticks(client, handler.endpoint, "good")) >= 3


async def test_sigterm_interrupts_runs_in_flight_and_exits_cleanly(
    tmp_path: pathlib.Path, handler: processes.HandlerProcess
) -> None:
    """A run still going at the stop is neither "replaced" nor lost: the state keeps it for the restart.
    Stopped during a retry, local mode once crashed with a ZMQError from its closed client."""
    directory = tmp_path / "schedules"
    directory.mkdir()
    soon = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1.5)).isoformat()
    write(directory, "handler.yaml", handler_yaml(handler.endpoint))
    slow = f'handler: probe\nmethod: slow\nparams: {{seconds: 30}}\nrunAt: "{soon}"\n'
    write(directory, "slow.yaml", schedule_yaml("slow", slow))
    nowhere = f"tcp://127.0.0.1:{processes.controlplane.free_port()}"
    write(directory, "gone.yaml", handler_yaml(nowhere).replace("name: probe", "name: gone"))
    retrying = f'handler: gone\nmethod: tick\nrunAt: "{soon}"\ntimeoutSeconds: 1\nretry: {{maxAttempts: 50}}\n'
    write(directory, "retrying.yaml", schedule_yaml("retrying", retrying))
    state, log = tmp_path / "state.json", tmp_path / "local.log"
    local_mode = start_local(directory, state, log, "--stop-grace", "1")
    await asyncio.sleep(5.0)  # both started; the second has failed an attempt or two
    local_mode.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(local_mode.wait, 10) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text
    assert "replaced" not in text
    saved = json.loads(state.read_text())["schedules"]
    for name in ("slow", "retrying"):
        status = saved[f"default/{name}"]["status"]
        [active] = status["active"]
        assert active["interrupted"].startswith("the engine stopped before the run finished"), status
        assert status["runs"] == []
