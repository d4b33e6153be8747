"""What the demo says of its children's logs, and the command it suggests."""

from __future__ import annotations

import os
import pathlib
import sys
import time

import pytest

from schedulezero_operator import demo

FAILURE = """\
2026-12-03 13:25:27,001 ERROR schedulezero_handler.server: flaky (call 3cf350a4) raised
Traceback (most recent call last):
  File "/srv/handler_runtime/schedulezero_handler/server.py", line 343, in _execute
    value = await method.func(**call.params)
            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/srv/examples/handlers/example_handler.py", line 48, in flaky
    raise RuntimeError(f"transient failure {self.failures[key]} of {failures} for {key!r}")
RuntimeError: transient failure 1 of 2 for 'nightly-import'
"""


def said(text: str) -> list[str]:
    lines: list[str] = []
    output = demo.ChildOutput("handler", pathlib.Path("/logs/handler.log"), lines.append)
    for line in text.splitlines():
        output.feed(line)
    output._flush()
    return lines


def test_a_failure_with_its_traceback_is_one_line_naming_the_exception_and_the_log() -> None:
    assert (
        said(FAILURE * 2)
        == [
            "handler ERROR: flaky (call 3cf350a4) raised: RuntimeError: transient failure 1 of 2 for 'nightly-import' "
            "(traceback in handler.log)"
        ]
        * 2
    )


def test_records_without_a_traceback_and_plain_lines_are_said_as_they_are() -> None:
    text = (
        "serving ExampleHandler on tcp://127.0.0.1:5555 (4 methods)\n"
        "2026-12-03 13:25:27,001 WARNING schedulezero_handler.server: busy\n"
        + FAILURE
        + "2026-12-03 13:25:28,001 INFO x: after\n"
    )
    assert said(text) == [
        "handler: serving ExampleHandler on tcp://127.0.0.1:5555 (4 methods)",
        "handler WARNING: busy",
        "handler ERROR: flaky (call 3cf350a4) raised: RuntimeError: transient failure 1 of 2 for 'nightly-import' "
        "(traceback in handler.log)",
        "handler INFO: after",
    ]


def test_a_chained_traceback_is_summed_up_once() -> None:
    chained = FAILURE + "\nDuring handling of the above exception, another exception occurred:\n\n" + FAILURE[88:]
    assert len(said(chained)) == 1


@pytest.mark.parametrize(
    ("on_path", "expected"),
    [(True, "schedulezero"), (False, ".venv/bin/schedulezero")],
    ids=["on-the-path", "not-on-the-path"],
)
def test_the_suggested_command_runs_from_where_the_demo_was_started(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, on_path: bool, expected: str
) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "schedulezero"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [".venv/bin/schedulezero", "demo"])
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin" if on_path else "/usr/bin:/bin")
    assert demo.command() == expected


def test_a_record_is_said_once_the_child_is_quiet_and_everything_reaches_the_log(tmp_path: pathlib.Path) -> None:
    lines: list[str] = []
    log = tmp_path / "handler.log"
    output = demo.ChildOutput("handler", log, lines.append)
    read, write = os.pipe()
    with os.fdopen(read, "rb") as stream:
        pump = output.pump(stream)
        os.write(write, b"2026-12-03 13:25:27,001 WARNING x: alone\n")
        deadline = time.monotonic() + 5
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines == ["handler WARNING: alone"]  # said without waiting for the next line
        os.write(write, FAILURE.encode())
        os.close(write)
        pump.join(5)
    assert lines[1].startswith("handler ERROR: flaky (call 3cf350a4) raised: RuntimeError")
    assert log.read_text() == "2026-12-03 13:25:27,001 WARNING x: alone\n" + FAILURE
