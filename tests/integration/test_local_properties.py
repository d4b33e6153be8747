"""Property-based tests of local mode: no file a user can put in the directory breaks it.

``schedulezero run --local DIR`` promises that a bad file is reported and the
other Schedules keep running. These tests hold it to that for *any* content:
arbitrary bytes, arbitrary YAML (tags, unquoted dates, anchors and aliases,
deep nesting, recursive and billion-laughs expansions) and Schedules whose
fields hold arbitrary values. They also check that whatever reaches the
engine gets a run record: no run may stay in ``status.active`` for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import io
import itertools
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, example, given, settings, target
from hypothesis import strategies as st

from schedulezero_handler import client as client_
from schedulezero_handler import protocol
from schedulezero_operator import engine as engine_
from schedulezero_operator import local, manifests, runs
from schedulezero_operator.sinks import ScheduleKey
from tests.support import controlplane, processes, waiting

T = TypeVar("T")

PROBE = "tests.support.handlers:ProbeHandler"
PARAMS_LIMIT = 64 * 1024
"""The CRD's bound on a Schedule's params, as JSON."""
MESSAGE_LIMIT = 4096
"""Longest problem message still readable on a terminal line or two; a longer one quotes a whole value."""
RUN_BOUND = 4.0
"""Seconds within which a run with timeoutSeconds 2 and one attempt must be recorded (reply grace included)."""
BLOCK_LIMIT = 0.5
"""Seconds a reload of a few small files may hold up local mode's loop; runs due meanwhile start that late."""
LOAD_BOUND = 3.0
"""Seconds a file of a few kilobytes may take to load: PyYAML needs about one to refuse deep nesting."""

PHASES = [phase for phase in Phase if phase is not Phase.explain]
"""Without the explain phase, whose tracing makes a RecursionError in PyYAML take seconds: no false hangs."""
CHEAP = settings(
    max_examples=200,
    deadline=None,
    database=None,
    phases=PHASES,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
EXPENSIVE = settings(
    max_examples=50,
    deadline=None,
    database=None,
    phases=PHASES,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,  # each failing example costs seconds: shrink one bug, not every bug found
)

SCHEDULE_HEAD = f"apiVersion: {manifests.API_VERSION}\nkind: Schedule\n"
GOOD_SPEC = {"handler": "probe", "method": "echo", "schedule": "@every 1s"}
SPEC_FIELDS = [
    "handler",
    "method",
    "params",
    "schedule",
    "runAt",
    "timeZone",
    "startTime",
    "endTime",
    "jitterSeconds",
    "suspend",
    "concurrencyPolicy",
    "startingDeadlineSeconds",
    "catchUpPolicy",
    "timeoutSeconds",
    "retry",
    "successfulRunsHistoryLimit",
    "failedRunsHistoryLimit",
    "timeoutSecs",  # a typo: an unknown field
]


class _Expired(BaseException):
    """Raised by the alarm: a BaseException, so that no ``except Exception`` in the code under test swallows it."""


@contextlib.contextmanager
def time_limit(what: str, seconds: float = LOAD_BOUND) -> Iterator[None]:
    """Turns a hang into a failure hypothesis can shrink: SIGALRM interrupts a pure-Python loop, and the
    failure says where it was interrupted. pytest-timeout's own alarm, if set, is re-armed with the time it had left.
    """
    where: list[str] = []

    def expire(signum: int, frame: types.FrameType | None) -> None:
        if frame is not None:
            where.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        raise _Expired

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    pending, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired:
        raise AssertionError(f"{what} took more than {seconds} s; interrupted at {''.join(where)}") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if pending:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, pending - (time.monotonic() - started)))


# -- what a loaded file must look like ------------------------------------------------------------


def json_size(value: Any, limit: int = PARAMS_LIMIT) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON, counted without building it; stops once past ``limit``.

    Iterative and bounded, so a billion-laughs expansion or a list that contains
    itself costs at most ``limit`` steps instead of hanging the test. Raises
    TypeError for a part JSON cannot carry, as ``protocol.check_json`` does.
    """
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        kind = type(item)
        if item is None or kind is bool:
            total += 4 if item is not False else 5
        elif kind is int:
            total += max(1, int(item.bit_length() * math.log10(2)) + 1)  # str() refuses > 4300 digits
        elif kind is float:
            if not math.isfinite(item):
                raise TypeError(f"{item} is not JSON")
            total += len(repr(item))
        elif kind is str:
            total += len(json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        elif kind in (list, tuple):
            total += 2 + max(0, len(item) - 1)
            stack.extend(item)
        elif kind is dict:
            total += 2 + max(0, len(item) - 1)
            for key in item:
                if type(key) is not str:
                    raise TypeError(f"key {key!r} of type {type(key).__name__} is not JSON")
                total += len(json.dumps(key, ensure_ascii=False).encode("utf-8", "surrogatepass")) + 1
            stack.extend(item.values())
        else:
            raise TypeError(f"a {kind.__name__} is not JSON")
    return total


def check_problems(paths: list[pathlib.Path], problems: list[str]) -> None:
    """Every problem is one readable message that says which file it is about."""
    for problem in problems:
        assert isinstance(problem, str), problem
        assert any(str(path) in problem for path in paths), f"problem names no file: {problem[:300]!r}"
        assert len(problem) <= MESSAGE_LIMIT, f"{len(problem)}-character problem: {problem[:300]!r}..."


def check_resources(resources: list[manifests.Resource]) -> None:
    """A resource that loads can be run: its params are JSON (what the wire and status carry) within 64 KiB."""
    for resource in resources:
        assert resource.kind in manifests.KINDS
        assert isinstance(resource.namespace, str)
        assert isinstance(resource.name, str)
        assert resource.name
        assert isinstance(resource.spec, dict)
        params = resource.spec.get("params", {})
        assert isinstance(params, dict), f"{resource.source}: params {type(params).__name__}"
        try:
            size = json_size(params)
        except TypeError as error:
            pytest.fail(f"{resource.source}: loaded with params that are not JSON: {error}")
        assert size <= PARAMS_LIMIT, f"{resource.source}: loaded with params of more than {size} bytes as JSON"
        protocol.check_json(params, "params")  # bounded now: the walk above saw at most PARAMS_LIMIT parts


def check_loaded_file(path: pathlib.Path) -> tuple[list[manifests.Resource], list[str]]:
    """``load_file`` on ``path``, with what every loaded file must satisfy; also run in a child process."""
    with time_limit(f"loading {path.name}"):
        resources, problems = manifests.load_file(path)
    check_problems([path], problems)
    check_resources(resources)
    return resources, problems


FILE_ERROR = -1
"""The file as a whole cannot be read as YAML: one problem for it."""
UNREADABLE = -2
"""PyYAML itself gives up (RecursionError, an integer too long for ``int``): the user must still be told."""


def documents_in(content: bytes) -> int:
    """The test's own reading: how many non-empty documents ``content`` holds, or FILE_ERROR or UNREADABLE.

    Files past the limits local mode documents (size, bracket depth) are refused whole, as files."""
    try:
        text = content.decode("utf-8")
        if len(content) > manifests.MAX_FILE_SIZE or manifests.too_deep(text) is not None:
            return FILE_ERROR
        return sum(document is not None for document in yaml.safe_load_all(text))
    except (UnicodeDecodeError, yaml.YAMLError):
        return FILE_ERROR
    except (RecursionError, ValueError):
        return UNREADABLE


def check_file_outcome(path: pathlib.Path, content: bytes) -> tuple[list[manifests.Resource], list[str]]:
    """Loads ``content`` from ``path``: never raises, and each bad document gets exactly one message."""
    path.write_bytes(content)
    resources, problems = check_loaded_file(path)
    expected = documents_in(content)
    if expected == FILE_ERROR:
        assert not resources, resources
        assert len(problems) == 1, problems
    elif expected == UNREADABLE:
        assert problems, "a file PyYAML cannot read was neither loaded nor reported"
    else:
        assert len(resources) + len(problems) == expected, (expected, resources, problems)
    return resources, problems


# -- strategies -----------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**64, -(2**63) - 1, 10**40]),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=8),  # !!binary
    st.dates(),  # unquoted dates
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.sets(st.integers(0, 9), max_size=3),  # !!set
)
_keys = st.one_of(st.text(max_size=10), st.integers(-3, 3), st.none(), st.dates())
any_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4), max_leaves=12
)
"""Whatever ``yaml.safe_load`` can produce, JSON or not."""

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    # "1e+16" as YAML 1.1 is a string, not a number: still JSON, only not the same one
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

RAW_VALUES = [
    "2020-01-01",
    "2001-12-14t21:59:43.10-05:00",
    "!!timestamp 2020-01-01 10:00:00",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!omap [{a: 1}, {b: 2}]",
    "!!pairs [{a: 1}, {a: 2}]",
    ".nan",
    ".inf",
    "-.inf",
    "1.0e+400",
    "9" * 5000,  # more digits than int() accepts
    "-" + "9" * 40,
    "0b1010",
    "190:20:30",  # a sexagesimal integer in YAML 1.1
    "yes",
    "~",
    "''",
    '"\\ud800"',  # a lone surrogate
    '"\\0\\x85\\u2028"',
    "&a [1, *a]",  # a list that contains itself
    "&m {x: *m}",
    "{1: a, 2020-01-01: b, ~: c, true: d}",
    "{a: 1, a: 2}",
    "{<<: {a: 1}, b: 2}",
    "[" * 60 + "]" * 60,
    "{a: " * 50 + "b" + "}" * 50,
    "{? [1, 2]: x}",  # an unhashable key
    "*undefined",
    "!!python/object/apply:os.system [echo]",
    "!unknown tag",
    "!!int not-a-number",
    "a" * 5000,
]


def laughs(levels: int, width: int) -> tuple[str, str]:
    """A top-level line defining anchors l0..l<levels>, each ``width`` aliases of the one before, and the alias
    of the last: ``width ** levels`` leaves from a few hundred bytes."""
    chain = ["&l0 lol", *(f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1))]
    return f"x: [{', '.join(chain)}]\n", f"*l{levels}"


raw_values = st.one_of(
    st.sampled_from(RAW_VALUES),
    st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
)


@st.composite
def odd_schedules(draw: st.DrawFn) -> tuple[str, str]:
    """A Schedule whose one spec field (or a typo'd one) holds an arbitrary value; returns (YAML, field)."""
    field = draw(st.sampled_from(SPEC_FIELDS))
    spec: dict[str, Any] = {name: value for name, value in GOOD_SPEC.items() if name != field}
    how = draw(st.sampled_from(["python", "json", "raw", "laughs"]))
    if how in ("python", "json"):
        value = draw(any_values if how == "python" else json_values)
        if field == "params" and draw(st.booleans()):
            value = {"value": value}
        document = {"metadata": {"name": "odd"}, "spec": {**spec, field: value}}
        return SCHEDULE_HEAD + yaml.safe_dump(document, sort_keys=False, allow_unicode=True), field
    prelude, value = "", draw(raw_values)
    if how == "laughs":
        prelude, value = laughs(draw(st.integers(1, 4)), draw(st.integers(2, 9)))
    if field == "params":
        value = f"{{value: {value}}}"
    body = yaml.safe_dump({"spec": spec}, sort_keys=False)
    return f"{prelude}{SCHEDULE_HEAD}metadata: {{name: odd}}\n{body}  {field}: {value}\n", field


resource_like = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from([manifests.API_VERSION, "v1", 1, None]),
        "kind": st.sampled_from(["Schedule", "Handler", "Pod", None, 3]),
        "metadata": st.fixed_dictionaries(
            {"name": st.sampled_from(["odd", "", "a/b"]) | any_values},
            optional={"namespace": st.sampled_from(["default", "other"]) | any_values},
        )
        | any_values,
        "spec": st.fixed_dictionaries({}, optional=dict.fromkeys(SPEC_FIELDS, any_values))
        | st.fixed_dictionaries({"endpoint": st.text(max_size=30) | any_values})
        | any_values,
    }
)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """Arbitrary YAML: dumped documents of any values, raw snippets with tags and aliases, expansions."""
    how = draw(st.sampled_from(["dump", "raw", "laughs", "mixed"]))
    if how == "dump":
        documents = draw(st.lists(any_values | resource_like, max_size=3))
        return yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=draw(st.booleans()))
    if how == "raw":
        return f"{draw(st.sampled_from(['', '--- ', 'key: ', 'spec: ']))}{draw(raw_values)}\n"
    if how == "laughs":
        prelude, alias = laughs(draw(st.integers(1, 4)), draw(st.integers(2, 9)))
        where = draw(st.sampled_from(["apiVersion", "kind", "metadata", "spec"]))
        return f"{prelude}{SCHEDULE_HEAD}metadata: {{name: laughing}}\n{where}: {alias}\n"
    parts = draw(st.lists(st.sampled_from(RAW_VALUES) | odd_schedules().map(lambda s: s[0]), min_size=1, max_size=3))
    return "---\n" + "\n---\n".join(parts) + "\n"


odd_handlers = st.builds(
    lambda name, endpoint: (
        f"apiVersion: {manifests.API_VERSION}\nkind: Handler\nmetadata: {{name: {name}}}\n"
        f"spec: {{endpoint: {json.dumps(endpoint)}}}\n"
    ),
    st.sampled_from(["other", "probe"]),
    st.sampled_from(
        ["tcp://127.0.0.1:99999", "tcp://*:5555", "tcp://no-such-host.invalid:5555", "tcp://127.0.0.1:1", "nope"]
    )
    | st.text(max_size=30),
)

KIND_LIST = f"apiVersion: {manifests.API_VERSION}\nkind: [Schedule]\nmetadata: {{name: odd}}\n"
SELF_CONTAINING = f"{SCHEDULE_HEAD}metadata: {{name: odd}}\nspec: {{handler: probe, method: echo, params: &a [*a]}}\n"
DEEP = "[" * 3000 + "]" * 3000 + "\n"
EXPANDING = laughs(4, 8)[0] + f"{SCHEDULE_HEAD}metadata: {{name: odd}}\nspec: {{handler: *l4}}\n"
"""Shapes every run tries, whatever hypothesis draws: a list where a name goes, a list that contains itself,
brackets nested 3000 deep, and 4096 strings from five aliases."""

file_contents = st.one_of(
    st.binary(max_size=200),
    yaml_texts().map(str.encode),
    odd_schedules().map(lambda s: s[0].encode()),
    odd_handlers.map(str.encode),
)


# -- invariant 1: loading never raises ------------------------------------------------------------


@CHEAP
@given(content=st.binary(max_size=300))
@example(content=b"caf\xe9")
@example(content=b"\xff\xfe")
@example(content=b"kind: Schedule\nmetadata: {name: caf\xe9}\n")
@example(content=b"\xef\xbb\xbfapiVersion: schedulezero.io/v1alpha1\n\x00")
def test_any_bytes_are_loaded_or_reported(tmp_path: pathlib.Path, content: bytes) -> None:
    """An editor saving Latin-1, a binary dropped in by mistake: reported as a problem with the file, not a crash."""
    check_file_outcome(tmp_path / "any.yaml", content)


@CHEAP
@given(text=yaml_texts())
@example(text=KIND_LIST)
@example(text=SELF_CONTAINING)
@example(text=DEEP)
@example(text=EXPANDING)
def test_any_yaml_is_loaded_or_reported(tmp_path: pathlib.Path, text: str) -> None:
    """YAML features a Kubernetes manifest never needs (tags, timestamps, aliases, expansions, deep nesting)
    cost the file they are in, one message per bad document, and never the process."""
    check_file_outcome(tmp_path / "any.yaml", text.encode())


@CHEAP
@given(schedule=odd_schedules())
@example(schedule=(f"{SCHEDULE_HEAD}metadata: {{name: odd}}\nspec: {{handler: &a [1, *a], method: echo}}\n", "handler"))
@example(
    schedule=(
        f"{SCHEDULE_HEAD}metadata: {{name: odd}}\nspec:\n  handler: probe\n  method: echo\n  schedule: '@every 1s'\n"
        "  params: {when: 2020-01-01, data: !!binary aGVsbG8=, tags: !!set {a}, ratio: .nan, 1: one}\n",
        "params",
    )
)
def test_schedule_fields_with_any_value_load_as_json_or_are_reported_by_field(
    tmp_path: pathlib.Path, schedule: tuple[str, str]
) -> None:
    """A Schedule either loads with params the engine can send (JSON, within 64 KiB) or gets one message that
    names the file and the field, so the user knows what to fix."""
    text, field = schedule
    content = text.encode()
    _, problems = check_file_outcome(tmp_path / "odd.yaml", content)
    if documents_in(content) >= 0:  # it is YAML: what is wrong is the field, and the message says which
        for problem in problems:
            assert field in problem, f"the message does not name spec.{field}: {problem[:300]!r}"


@CHEAP
@given(params=json_values.filter(lambda v: isinstance(v, dict)))
def test_schedules_with_json_params_load(tmp_path: pathlib.Path, params: dict[str, Any]) -> None:
    """The other side of the coin: ordinary JSON params are not refused."""
    document = {"metadata": {"name": "plain"}, "spec": {**GOOD_SPEC, "params": params}}
    text = SCHEDULE_HEAD + yaml.safe_dump(document, allow_unicode=True)
    resources, problems = check_file_outcome(tmp_path / "plain.yaml", text.encode())
    assert problems == []
    assert [r.name for r in resources] == ["plain"]


@settings(CHEAP, max_examples=100)
@given(contents=st.lists(st.tuples(st.sampled_from([".yaml", ".yml"]), file_contents), max_size=4))
@example(contents=[(".yaml", KIND_LIST.encode()), (".yml", b"caf\xe9")])
@example(contents=[(".yaml", SELF_CONTAINING.encode()), (".yaml", DEEP.encode())])
def test_a_directory_of_bad_files_still_yields_its_good_ones(
    tmp_path: pathlib.Path, contents: list[tuple[str, bytes]]
) -> None:
    """``load_directory`` on bad neighbours: the good Schedule still loads and each problem names its file."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as name:
        directory = pathlib.Path(name)
        spec = yaml.safe_dump(GOOD_SPEC, default_flow_style=True)
        good = f"{SCHEDULE_HEAD}metadata: {{name: good-one}}\nspec: {spec}"
        (directory / "good.yaml").write_text(good)
        paths = [directory / "good.yaml"]
        for index, (suffix, content) in enumerate(contents):
            paths.append(directory / f"{index}{suffix}")
            paths[-1].write_bytes(content)
        with time_limit("loading the directory", LOAD_BOUND + 1.5 * len(contents)):
            resources, problems = manifests.load_directory(directory)
    check_problems(paths, problems)
    check_resources(resources)
    assert ("Schedule", "default", "good-one") in {(r.kind, r.namespace, r.name) for r in resources}, problems


CHILD = """
import pathlib, resource, sys
from tests.integration.test_local_properties import check_loaded_file
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
check_loaded_file(pathlib.Path(sys.argv[1]))
"""


@pytest.mark.parametrize("where", ["params", "handler", "unknown field", "namespace", "apiVersion"])
def test_a_billion_laughs_is_refused_in_bounded_time_and_memory(tmp_path: pathlib.Path, where: str) -> None:
    """Ten levels of ten aliases (10**9 strings from 400 bytes): loading must neither hang nor exhaust memory,
    wherever the alias lands. In a child process limited to 1 GiB, so a failure cannot take the machine down."""
    prelude, alias = laughs(9, 10)
    spec = {**GOOD_SPEC}
    metadata, head = "{name: laughing}", SCHEDULE_HEAD
    extra = ""
    if where == "params":
        extra = f"  params: {{value: {alias}}}\n"
    elif where == "handler":
        spec.pop("handler")
        extra = f"  handler: {alias}\n"
    elif where == "unknown field":
        extra = f"  surprise: {alias}\n"
    elif where == "namespace":
        metadata = f"{{name: laughing, namespace: {alias}}}"
    else:
        head = f"apiVersion: {alias}\nkind: Schedule\n"
    path = tmp_path / "laughs.yaml"
    path.write_text(f"{prelude}{head}metadata: {metadata}\n{yaml.safe_dump({'spec': spec})}{extra}")
    roots = [str(controlplane.REPO / root) for root in ("operator", "handler_runtime", "conductor")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(controlplane.REPO), *roots])}
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)],
            cwd=controlplane.REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading a billion laughs in {where} took more than 30 s")
    assert child.returncode == 0, child.stderr[-3000:]


# -- invariant 2: a running local mode survives bad files -----------------------------------------


async def _cancel_the_rest() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class LoopThread:
    """An event loop in a thread of its own.

    Hypothesis is synchronous and spends real time generating and shrinking;
    with local mode on its own loop, the good Schedule keeps its real timing
    meanwhile, and each example drives local mode through ``run``.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # what local mode left behind (a state file write) goes with the loop
            self.run(_cancel_the_rest(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@dataclasses.dataclass
class RecordingTerminal(local.Terminal):
    """The terminal, also keeping every finished run, so the test sees the good Schedule's timing."""

    runs: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)

    def run_finished(self, key: ScheduleKey, run: dict[str, Any]) -> None:
        self.runs.append((str(key), run))
        super().run_finished(key, run)


@pytest.fixture
def handler(tmp_path: pathlib.Path) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path) as process:
        yield process


async def _local_mode(directory: pathlib.Path, state: pathlib.Path, terminal: local.Terminal) -> local.LocalMode:
    """Made on the loop that runs it: the ZeroMQ client and the engine's timer belong to that loop."""
    return local.LocalMode(
        directory,
        state_path=state,
        terminal=terminal,
        settings=engine_.EngineSettings(status_interval=0.2),
        rescan_interval=3600,  # the examples reload themselves: a failure is then theirs alone
    )


async def _reload(mode: local.LocalMode) -> float:
    """Reloads on local mode's loop; returns for how many seconds at most that held up the loop, and so
    every Schedule, as the longest gap a 10 ms ticker saw meanwhile."""
    longest = 0.0

    async def tick() -> None:
        nonlocal longest
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            longest = max(longest, time.monotonic() - before - 0.01)

    ticker = asyncio.ensure_future(tick())
    try:
        await mode.reload()
    finally:
        ticker.cancel()
    return longest


async def _event() -> asyncio.Event:
    return asyncio.Event()


def _moment(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def test_local_mode_keeps_running_the_good_schedule_while_bad_files_come_and_go(
    tmp_path: pathlib.Path, handler: processes.HandlerProcess
) -> None:
    """What a user of ``run --local`` relies on: saving a broken file never stops the process, and the
    Schedules in the other files keep running on time; each broken file is reported, naming it."""
    directory = tmp_path / "schedules"
    directory.mkdir()
    (directory / "handler.yaml").write_text(
        f"apiVersion: {manifests.API_VERSION}\nkind: Handler\nmetadata: {{name: probe}}\n"
        f'spec: {{endpoint: "{handler.endpoint}"}}\n'
    )
    (directory / "good.yaml").write_text(
        f"{SCHEDULE_HEAD}metadata: {{name: good}}\nspec: {{handler: probe, method: tick, schedule: '@every 1s'}}\n"
    )
    terminal = RecordingTerminal(io.StringIO())
    with LoopThread() as thread:
        mode = thread.run(_local_mode(directory, tmp_path / "state.json", terminal))
        stop = thread.run(_event())
        running = asyncio.run_coroutine_threadsafe(mode.run(stop), thread.loop)
        waiting.eventually(lambda: any(key == "default/good" for key, _ in terminal.runs), timeout=10)
        started = time.monotonic()
        worst: list[tuple[float, list[tuple[str, bytes, int]]]] = [(0.0, [])]

        @EXPENSIVE
        @given(files=st.lists(st.tuples(st.sampled_from([".yaml", ".yml"]), file_contents), min_size=1, max_size=3))
        @example(files=[(".yaml", b"caf\xe9")])
        @example(files=[(".yaml", KIND_LIST.encode())])
        @example(files=[(".yaml", DEEP.encode())])
        @example(files=[(".yml", SELF_CONTAINING.encode())])
        @example(files=[(".yaml", EXPANDING.encode())])
        def bad_files_arrive(files: list[tuple[str, bytes]]) -> None:
            paths = [directory / f"zz-{index}{suffix}" for index, (suffix, _) in enumerate(files)]
            try:
                for path, (_, content) in zip(paths, files, strict=True):
                    path.write_bytes(content)
                    # A hang is caught here, not on local mode's loop; any other failure is the reload's to show.
                    with time_limit(f"loading {path.name}"), contextlib.suppress(Exception):
                        manifests.load_file(path)
                held = thread.run(_reload(mode))
                assert not running.done(), f"local mode stopped: {running.exception()!r}"
                # Timing is checked after all examples, on the worst one: shrunk to the limit, it would be flaky.
                target(held, label="seconds a reload held up the loop")
                if held > worst[0][0]:
                    worst[0] = (
                        held,
                        [
                            (path.name, content[:60], len(content))
                            for path, (_, content) in zip(paths, files, strict=True)
                        ],
                    )
                output = terminal.out.getvalue()
                for path in paths:
                    for problem in manifests.load_file(path)[1]:
                        assert problem in output, f"not reported: {problem[:300]!r}"
            finally:
                for path in paths:
                    path.unlink(missing_ok=True)
                thread.run(_reload(mode))

        try:
            bad_files_arrive()
            held, files = worst[0]
            assert held <= BLOCK_LIMIT, (
                f"a reload held up every Schedule for {held:.2f} s; files (name, start, size): {files}"
            )
            time.sleep(max(0.0, started + 4.5 - time.monotonic()))  # at least four runs of the good one
            assert not running.done(), f"local mode stopped: {running.exception()!r}"
            elapsed = time.monotonic() - started
        finally:
            thread.loop.call_soon_threadsafe(stop.set)
            running.result(30)  # a clean stop: the state file written, nothing raised
        good = [run for key, run in terminal.runs if key == "default/good"]

    failed = [run for run in good if run["outcome"] != "Succeeded"]
    assert not failed, failed[:3]
    times = sorted(_moment(run["scheduledTime"]) for run in good)
    gaps = {(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)}
    assert gaps == {1.0}, f"the good Schedule skipped or repeated a time: gaps {sorted(gaps)}"
    assert len(good) >= elapsed - 1.5, f"{len(good)} runs in {elapsed:.1f} s"
    late = [
        run for run in good if (_moment(run["startTime"]) - _moment(run["scheduledTime"])).total_seconds() > BLOCK_LIMIT
    ]
    assert not late, f"runs started late: {late[:3]}"
    saved = json.loads((tmp_path / "state.json").read_text())["schedules"]["default/good"]["status"]
    assert saved["counters"]["succeeded"] >= len(good) - 1


# -- invariant 3: every run that reaches the engine ends with a record ----------------------------


@dataclasses.dataclass(frozen=True)
class Nested:
    """``leaf`` inside ``depth`` lists or objects: built in the test, as hypothesis cannot print it that deep."""

    leaf: Any
    depth: int
    as_list: bool

    def build(self) -> Any:
        value = self.leaf
        for _ in range(self.depth):
            value = [value] if self.as_list else {"k": value}
        return value


@dataclasses.dataclass(frozen=True)
class Repeated:
    """``text`` ``count`` times, printed short in a falsifying example."""

    text: str
    count: int


def materialise(value: Any) -> Any:
    """The JSON value a recipe of Nested and Repeated parts stands for."""
    if isinstance(value, Nested):
        return Nested(materialise(value.leaf), value.depth, value.as_list).build()
    if isinstance(value, Repeated):
        return value.text * value.count
    if isinstance(value, list):
        return [materialise(item) for item in value]
    if isinstance(value, dict):
        return {key: materialise(item) for key, item in value.items()}
    return value


_awkward_keys = st.text(max_size=8) | st.sampled_from(["", " ", "\x00", "é", "😀", "a.b", "$ref", "__proto__"])
_awkward_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**64, max_value=2**300),
    st.integers(min_value=-(2**300), max_value=-(2**63) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.sampled_from(["\ud800", "x\udfffy", "\u2028", "\x00", "\ufeff"]),  # lone surrogates: JSON has \ud800
    st.builds(Repeated, st.sampled_from(["a", "é", "😀"]), st.integers(1000, 20000)),
)
awkward_json = st.one_of(
    st.recursive(
        _awkward_leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_awkward_keys, inner, max_size=4),
        max_leaves=8,
    ),
    st.builds(Nested, st.integers() | st.text(max_size=5), st.integers(2, 1000), st.booleans()),
)
awkward_params = st.fixed_dictionaries({"value": awkward_json}) | st.dictionaries(
    _awkward_keys, awkward_json, max_size=4
)
"""Recipes of JSON params: ``materialise`` makes them."""


@dataclasses.dataclass
class MemorySink:
    statuses: dict[ScheduleKey, dict[str, Any]] = dataclasses.field(default_factory=dict)

    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        self.statuses[key] = status


async def _engine(endpoint: str) -> engine_.Engine:
    engine = engine_.Engine(
        client=client_.Client(), status_sink=MemorySink(), settings=engine_.EngineSettings(status_interval=0.1)
    )
    await engine.start()
    engine.set_handler("default", "probe", engine_.HandlerInfo(endpoint))
    return engine


async def _stop_engine(engine: engine_.Engine) -> None:
    await engine.stop()
    await engine.client.close()


async def _run_once(engine: engine_.Engine, key: ScheduleKey, spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Applies the Schedule, runs it once now, and returns its status once the run is over (or RUN_BOUND passed),
    with what became of a run task that ended without recording its run; or ({}, why) if the engine refused it."""
    uid = str(uuid.uuid4())
    invalid = engine.apply_schedule(key, uid=uid, spec=spec, created=datetime.datetime.now(datetime.UTC))
    if invalid is not None:
        return {}, invalid
    assert engine.run_now(key, "once")
    wanted = str(runs.manual_run_id(uid, "once"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_BOUND
    why = ""
    while loop.time() < deadline:
        status = engine.render_status(key)
        assert status is not None
        if not status["active"] and any(run["runId"] == wanted for run in status["runs"]):
            return status, why
        # Not the property, only a shortcut to it (and its cause): a run whose task has ended is never recorded.
        ended = [r.task for r in engine._schedules[key].active.values() if r.task is not None and r.task.done()]
        if ended and not why:
            why = repr(ended[0].exception()) if not ended[0].cancelled() else "cancelled"
            deadline = min(deadline, loop.time() + 0.3)
        await asyncio.sleep(0.01)
    status = engine.render_status(key)
    assert status is not None
    return status, why


async def _remove(engine: engine_.Engine, key: ScheduleKey) -> None:
    engine.remove_schedule(key)


def test_every_run_with_awkward_json_params_ends_with_a_record(
    tmp_path: pathlib.Path, handler: processes.HandlerProcess
) -> None:
    """Params that are JSON and within the CRD (huge integers, deep nesting, long or odd strings, empty keys)
    either are refused when the file is loaded or get a run record: a run stuck in ``status.active`` would
    block every later run under concurrencyPolicy Forbid, and nobody would learn why."""
    names = itertools.count()
    with LoopThread() as thread:
        engine = thread.run(_engine(handler.endpoint))
        try:

            @settings(EXPENSIVE, max_examples=60)
            @given(params=awkward_params)
            @example(params={"value": 2**64})
            @example(params={"value": Nested(0, 600, as_list=True)})
            @example(params={"value": "\ud800"})
            @example(params={"": "", "😀": Repeated("é", 20000)})
            def one_run(params: dict[str, Any]) -> None:
                params = materialise(params)
                assume(json_size(params) <= PARAMS_LIMIT)
                spec = {**GOOD_SPEC, "schedule": "@every 1h", "timeoutSeconds": 2, "retry": {"maxAttempts": 1}}
                document = {
                    "apiVersion": manifests.API_VERSION,
                    "kind": "Schedule",
                    "metadata": {"name": f"awkward-{next(names)}"},
                    "spec": {**spec, "params": params},
                }
                try:
                    resource = manifests.parse_document(document, "generated.yaml")
                except manifests.ManifestError as error:  # refusing at load is an answer too, if it says why
                    refusal = str(error)
                else:
                    refusal = ""
                if refusal:
                    assert "params" in refusal, refusal[:300]
                    return
                key = ScheduleKey(resource.namespace, resource.name)
                try:
                    status, why = thread.run(_run_once(engine, key, resource.spec))
                finally:
                    thread.run(_remove(engine, key))
                if not status:  # the engine refused the Schedule: as good as the loader refusing, if it says why
                    assert "params" in why, why[:300]
                    return
                assert not status["active"], f"the run is still active after {RUN_BOUND} s; its task: {why}"
                assert status["runs"], f"no run recorded; its task: {why}"

            one_run()
        finally:
            thread.run(_stop_engine(engine))
