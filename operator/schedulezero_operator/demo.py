"""What ``schedulezero demo`` shows of its handler and conductor, and how it tells you to call them.

The demo's flaky job fails on purpose, and the handler logs each failure with
its whole traceback, as it should in production. On the demo's terminal that
buried the run lines, so the children's output goes to log files instead, and
the terminal gets one line per log record: a record with a traceback is
summed up by its message and the exception it ended with.
"""

from __future__ import annotations

import os
import pathlib
import re
import select
import shutil
import sys
import threading
from collections.abc import Callable
from typing import IO

# A record as the handler's and conductor's text log format starts it: "2026-12-03 13:25:27,001 ERROR name: ...".
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")
_TRACEBACK = "Traceback (most recent call last):"
QUIET = 0.2
"""Seconds without output after which a record is taken to be complete."""


class ChildOutput:
    """Copies a child's output to its log file, and says each record in one line on the terminal."""

    def __init__(self, name: str, log: pathlib.Path, say: Callable[[str], None]) -> None:
        self.name = name
        self.log = log
        self.say = say
        self._pending: str | None = None  # a record whose traceback has not reached its exception yet
        self._in_traceback = False
        self._summed_up = False  # the rest of a record already summed up (a chained traceback): the log's only

    def feed(self, line: str) -> None:
        """One line of the child's output (without its newline)."""
        record = _RECORD.match(line)
        if record is not None:
            self._flush()
            self._pending = f"{self.name} {record['level']}: {record['message']}"
            self._in_traceback = self._summed_up = False
            return
        if self._summed_up:
            return
        if line == _TRACEBACK and self._pending is not None:
            self._in_traceback = True
            return
        if self._in_traceback:
            if line and not line[0].isspace():  # the exception the traceback ended with
                assert self._pending is not None
                self.say(f"{self._pending}: {line} (traceback in {self.log.name})")
                self._pending, self._in_traceback, self._summed_up = None, False, True
            return
        if self._pending is not None:
            self._flush()
        if line.strip():
            self.say(f"{self.name}: {line}")

    def _flush(self) -> None:
        if self._pending is not None and not self._in_traceback:
            self.say(self._pending)
        self._pending, self._in_traceback = None, False

    def pump(self, stream: IO[bytes]) -> threading.Thread:
        """Reads ``stream`` to its end on a thread of its own, writing everything to the log file.

        A record is said once the child has been quiet for a moment after it (a traceback comes
        with its record, in the same write), so a record without one is not held back until the next.
        """

        def run() -> None:
            descriptor, partial = stream.fileno(), b""
            with self.log.open("ab") as log:
                while True:
                    readable, _, _ = select.select([descriptor], [], [], QUIET)
                    if not readable:
                        self._flush()
                        continue
                    chunk = os.read(descriptor, 65536)
                    if not chunk:
                        break
                    log.write(chunk)
                    log.flush()
                    *lines, partial = (partial + chunk).split(b"\n")
                    for line in lines:
                        self.feed(line.decode("utf-8", "replace"))
                if partial:
                    self.feed(partial.decode("utf-8", "replace"))
                self._flush()

        thread = threading.Thread(target=run, name=f"demo-{self.name}-output", daemon=True)
        thread.start()
        return thread


def command() -> str:
    """How to run this same ``schedulezero`` from the current directory: its name when the PATH finds it
    (an activated virtualenv, an installed package), else the path it was started by (``.venv/bin/schedulezero``
    under ``make demo``)."""
    started = pathlib.Path(os.path.abspath(sys.argv[0]))
    found = shutil.which("schedulezero")
    if found is not None and pathlib.Path(found).resolve() == started.resolve():
        return "schedulezero"
    try:
        relative = started.relative_to(pathlib.Path.cwd())
    except ValueError:
        return str(started)
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"


def log_directory() -> pathlib.Path:
    """Where the demo's handler and conductor logs are kept after it stops: the user's state directory."""
    from schedulezero_operator import local

    directory = local.state_home() / "schedulezero" / "demo"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def fresh_log(directory: pathlib.Path, name: str) -> pathlib.Path:
    """The log of this run of the demo, emptied of the previous run's."""
    path = directory / f"{name}.log"
    path.write_text("", encoding="utf-8")
    os.chmod(path, 0o600)
    return path
