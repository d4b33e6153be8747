"""Local mode: the engine on a directory of Schedule and Handler YAML, without a cluster.

Status lives in a state file, written the way the operator writes status, so
a restart resumes from it and catches up exactly as it would in a cluster.
The state file is kept outside the directory, in the user's state directory
and keyed by the directory's absolute path: the directory holds only the files
you would ``kubectl apply``, and applying it stays possible.
The directory is re-read when it changes; a file that becomes invalid is
reported and the Schedules from other files keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import uuid
from typing import Any, TextIO

from schedulezero_handler import client as client_
from schedulezero_operator import engine as engine_
from schedulezero_operator import manifests, probe, status
from schedulezero_operator.sinks import ScheduleKey

log = logging.getLogger(__name__)

UNREADY_REPORTED = frozenset({"HandlerNotFound", "HandlerUnreachable", "MethodNotFound", "InvalidParams"})
"""Ready reasons local mode reports on the terminal (an invalid Schedule is reported when its file is read)."""

# Where the state file used to be, inside the directory; moved out on first start.
OLD_STATE_FILE = ".schedulezero-state.json"


def state_home() -> pathlib.Path:
    """$XDG_STATE_HOME, else ~/.local/state, as the XDG Base Directory specification has it.

    A relative $XDG_STATE_HOME is ignored, as the specification says, rather than
    resolved against whatever directory local mode happens to start in.
    """
    configured = os.environ.get("XDG_STATE_HOME", "")
    if configured and os.path.isabs(configured):
        return pathlib.Path(configured)
    return pathlib.Path.home() / ".local" / "state"


def default_state_path(directory: pathlib.Path) -> pathlib.Path:
    """The state file of ``directory``: one per absolute path, named so that a person can tell which is which."""
    absolute = directory.resolve()
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:16]
    return state_home() / "schedulezero" / "local" / f"{absolute.name or 'root'}-{digest}.json"


class StateFile:
    """Schedule identities and statuses, saved atomically (write, then rename)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.schedules: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self.schedules = dict(json.loads(path.read_text()).get("schedules", {}))
            except (OSError, ValueError, AttributeError) as error:
                broken = path.with_suffix(".broken")
                path.replace(broken)
                log.error("state file %s unreadable (%s); moved to %s, starting afresh", path, error, broken)
        self._dirty = False
        self._saving: asyncio.Task[None] | None = None

    def identity(self, key: ScheduleKey) -> tuple[str, datetime.datetime]:
        """The Schedule's uid and creation time, made on first sight: @every and run ids hang on them."""
        entry = self.schedules.setdefault(str(key), {})
        if "uid" not in entry:
            entry["uid"] = str(uuid.uuid4())
            entry["created"] = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()  # as Kubernetes
            self.mark()
        return entry["uid"], datetime.datetime.fromisoformat(entry["created"])

    def status(self, key: ScheduleKey) -> dict[str, Any] | None:
        status = self.schedules.get(str(key), {}).get("status")
        return status if isinstance(status, dict) else None

    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        entry = self.schedules.get(str(key))
        if entry is not None:
            entry["status"] = status
            self.mark()

    def forget(self, key: ScheduleKey) -> None:
        if self.schedules.pop(str(key), None) is not None:
            self.mark()

    def mark(self) -> None:
        self._dirty = True
        if self._saving is None or self._saving.done():
            with contextlib.suppress(RuntimeError):  # no loop yet: saved at the next mark or on close
                self._saving = asyncio.get_running_loop().create_task(self._save_soon())

    async def _save_soon(self) -> None:
        await asyncio.sleep(0.2)  # one write for a burst of changes
        self.save()

    def save(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps({"version": 1, "schedules": self.schedules}, indent=1, sort_keys=True))
        os.replace(temporary, self.path)


@dataclasses.dataclass
class Terminal:
    """Shows runs, warnings and problems as they happen."""

    out: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)

    def _color(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.out.isatty() else text

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def problem(self, text: str) -> None:
        self.say(self._color(f"error   {text}", "31"))

    def header(self) -> None:
        """The columns of the run lines; a line appears when its run ends, so the first column is in order."""
        self.say(f"{'finished':12}  {'scheduled':12}  {'schedule':32} {'outcome':10} {'duration':>11}  attempts result")

    def run_finished(self, key: ScheduleKey, run: dict[str, Any]) -> None:
        outcome = run["outcome"]
        colour = "32" if outcome == "Succeeded" else "33" if outcome in ("Skipped", "Missed") else "31"
        finished = str(run.get("finishTime") or status.rfc3339(datetime.datetime.now(datetime.UTC)))[11:23]
        scheduled = run["scheduledTime"][11:23]
        duration = f"{run['durationSeconds'] * 1000:8.1f} ms" if "durationSeconds" in run else " " * 11
        attempts = run.get("attempts", 0)
        detail = run.get("result", "") if outcome == "Succeeded" else run.get("error", {}).get("message", "")
        detail = detail.splitlines()[0] if detail else ""
        line = f"{finished:12}  {scheduled:12}  {key!s:32} {outcome:10} {duration}  {attempts} att.  {detail[:70]}"
        self.say(self._color(line, colour))

    def event(self, key: ScheduleKey, *, warning: bool, reason: str, message: str) -> None:
        if warning and reason not in ("RunFailed", "Skipped"):  # those show as run lines already
            self.say(self._color(f"warning {key}: {reason}: {message}", "33"))


def _fingerprint(directory: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        with contextlib.suppress(OSError):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    return digest.hexdigest()


def _move_old_state(old: pathlib.Path, new: pathlib.Path, terminal: Terminal) -> None:
    """A directory run before the state moved out keeps its history, and becomes appliable again."""
    if not old.is_file() or new.exists():
        return
    new.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(old, new)
    terminal.say(f"moved the state file {old} out of the directory, to {new}")


class LocalMode:
    """Feeds the engine from a directory and keeps it in step with the directory's changes."""

    def __init__(
        self,
        directory: pathlib.Path,
        *,
        state_path: pathlib.Path | None = None,
        terminal: Terminal | None = None,
        settings: engine_.EngineSettings | None = None,
        rescan_interval: float = 1.0,
        probe_interval: float = 30.0,
    ) -> None:
        self.directory = directory
        self.terminal = terminal or Terminal()
        if state_path is None:
            state_path = default_state_path(directory)
            _move_old_state(directory / OLD_STATE_FILE, state_path, self.terminal)
        self.state = StateFile(state_path)
        self.client = client_.Client()
        self.engine = engine_.Engine(
            client=self.client,
            status_sink=self.state,
            events=self.terminal,
            observer=self.terminal,
            settings=settings,
        )
        self.rescan_interval = rescan_interval
        self.prober = probe.Prober(self.client, interval=probe_interval, on_result=self._probed)
        self._schedules: dict[ScheduleKey, manifests.Resource] = {}
        self._handlers: dict[tuple[str, str], manifests.Resource] = {}
        self._problems: set[str] = set()
        self._unready: dict[ScheduleKey, str] = {}
        """What was last said of each Schedule that cannot run as written, so it is said once."""
        self._fingerprint = ""

    async def run(self, stop: asyncio.Event) -> None:
        self.terminal.header()
        await self.engine.start()
        self.prober.start()
        try:
            while not stop.is_set():
                fingerprint = _fingerprint(self.directory)
                if fingerprint != self._fingerprint:
                    self._fingerprint = fingerprint
                    try:
                        await self.reload()
                    except Exception as error:  # a bug must not stop the Schedules already running
                        log.exception("reloading %s failed", self.directory)
                        self.terminal.problem(f"{self.directory}: reloading failed: {type(error).__name__}: {error}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rescan_interval)
        finally:
            await self.prober.stop()
            await self.engine.stop()
            await self.client.close()
            self.state.save()

    async def reload(self) -> None:
        """Applies the directory's current contents to the engine.

        Files are read and parsed in a thread: a pathological file (PyYAML takes
        about a second to give up on deep nesting) must not hold up the runs.
        """
        resources, problems = await asyncio.to_thread(manifests.load_directory, self.directory)
        for problem in sorted(set(problems) - self._problems):
            self.terminal.problem(problem)
        self._problems = set(problems)
        handlers = {(r.namespace, r.name): r for r in resources if r.kind == "Handler"}
        schedules = {ScheduleKey(r.namespace, r.name): r for r in resources if r.kind == "Schedule"}
        for namespace, name in self._handlers.keys() - handlers.keys():
            self.engine.set_handler(namespace, name, None)
            self.prober.forget(f"{namespace}/{name}")
        for (namespace, name), resource in handlers.items():
            if self._handlers.get((namespace, name)) != resource:
                self._apply_handler(namespace, name, resource)
        self._handlers = handlers
        for key in self._schedules.keys() - schedules.keys():
            self.engine.remove_schedule(key)
            self.state.forget(key)
            self.terminal.say(f"removed {key}")
        for key, resource in schedules.items():
            if self._schedules.get(key) != resource:
                uid, created = self.state.identity(key)
                invalid = self.engine.apply_schedule(
                    key, uid=uid, spec=resource.spec, created=created, generation=1, status_=self.state.status(key)
                )
                if invalid is not None:
                    self.terminal.problem(f"{resource.source}: Schedule {key}: {invalid}")
        self._schedules = schedules
        self._report_unready()

    def _apply_handler(self, namespace: str, name: str, resource: manifests.Resource) -> None:
        endpoint = resource.spec.get("endpoint")
        if not endpoint:
            self.terminal.problem(f"{resource.source}: Handler {namespace}/{name}: local mode needs spec.endpoint")
            self.engine.set_handler(namespace, name, None)
            return
        self.engine.set_handler(namespace, name, engine_.HandlerInfo(endpoint))
        self.prober.watch(f"{namespace}/{name}", [endpoint])

    def _probed(self, handler: str, results: list[probe.ProbeResult]) -> None:
        namespace, _, name = handler.partition("/")
        (result,) = results
        resource = self._handlers.get((namespace, name))
        if resource is None or resource.spec.get("endpoint") != result.endpoint:
            return
        methods = frozenset(result.methods) if result.methods is not None else None
        reachable = result.state != "Unreachable"
        params = {m["name"]: tuple(m.get("params", ())) for m in result.described} if reachable else None
        info = engine_.HandlerInfo(result.endpoint, methods, reachable=reachable, params=params)
        self.engine.set_handler(namespace, name, info)
        self._report_unready()

    def _report_unready(self) -> None:
        """Says, once, which Schedules name a Handler, method or params that cannot work; their runs still fire
        and fail, as in a cluster, but a user should not have to find that out from the run lines."""
        for key, resource in self._schedules.items():
            rendered = self.engine.render_status(key)
            ready = next((c for c in (rendered or {}).get("conditions", []) if c["type"] == "Ready"), None)
            if ready is None or ready["status"] == "True" or ready["reason"] not in UNREADY_REPORTED:
                self._unready.pop(key, None)
                continue
            said = f"{resource.source}: Schedule {key}: {ready['reason']}: {ready['message']}"
            if self._unready.get(key) != said:
                self._unready[key] = said
                self.terminal.problem(said)
