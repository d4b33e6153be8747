"""The scheduling engine in-process (no Kubernetes): fire lateness, memory, time to schedule, status writes.

The engine runs in this process, as in the operator, and calls a real handler
process (``schedulezero handler lateness_handler:LatenessHandler``) whose
``tick`` records, at its very start, ``time.time()`` minus the run's nominal
time. Status goes to a sink that only counts writes.

- **Fire lateness** at about 100 fires/s with N Schedules loaded: 100 of them
  run ``@every 1s`` with their ``startTime`` spread evenly over the second
  (10 ms apart), the other N - 100 run ``0 0 1 1 *`` (once a year, so never
  during the benchmark). N = 1 is one ``@every 1s`` Schedule (1 fire/s; the
  interval cannot be under 1 s). An extra row fires the 100 at the same instant.
- **10,000 Schedules**: process RSS before loading, once all are scheduled
  and after firing; the time from the first ``apply_schedule`` until every
  Schedule has a ``nextRunTime`` in the engine and in a written status.
- **Status writes per second** with 10, 100 and 500 of the 10,000 Schedules
  firing every second (status interval 2 s, the default): at most one write
  per Schedule per interval, so at most N_firing / 2 per second.

Run from the repository root: ``.venv/bin/python bench/bench_engine.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import math
import pathlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import benchlib
import psutil

from schedulezero_handler import Client
from schedulezero_operator import engine as engine_
from schedulezero_operator import status
from schedulezero_operator.sinks import ScheduleKey

LATENESS_HANDLER = "lateness_handler:LatenessHandler"
NAMESPACE = "bench"
HANDLER = "lateness"
RARE = "0 0 1 1 *"
"""The schedule of the Schedules that are loaded but do not fire: midnight on 1 January."""
MIB = 1024 * 1024
RSS_GOAL_MIB = 300.0
SCHEDULED_GOAL_S = 60.0
STOP_TIMEOUT = 30.0
"""Seconds Engine.stop() may take before the benchmark gives up on it (it waits for runs in flight)."""
YIELD_EVERY = 100
"""Schedules applied between two returns to the event loop (the operator gets them one watch event at a time)."""


# -- the engine's surroundings ----------------------------------------------------


class CountingSink:
    """The engine's StatusSink: counts writes, and remembers which Schedules were written with a next run."""

    def __init__(self) -> None:
        self.writes = 0
        self.scheduled: set[ScheduleKey] = set()

    async def write_status(self, key: ScheduleKey, status_: dict[str, Any]) -> None:
        self.writes += 1
        if status_.get("nextRunTime"):
            self.scheduled.add(key)


@dataclasses.dataclass(frozen=True)
class LatenessHandler:
    """The handler process, seen through a client."""

    client: Client
    endpoint: str

    async def take_samples_ms(self) -> list[float]:
        samples = await self.client.call(self.endpoint, "take_samples", timeout=30.0)
        return [sample * 1000 for sample in samples]


@contextlib.asynccontextmanager
async def running_engine(handler: LatenessHandler) -> AsyncIterator[tuple[engine_.Engine, CountingSink]]:
    sink = CountingSink()
    engine = engine_.Engine(client=handler.client, status_sink=sink)
    await engine.start()
    engine.set_handler(NAMESPACE, HANDLER, engine_.HandlerInfo(handler.endpoint, frozenset({"tick"})))
    try:
        yield engine, sink
    finally:
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await engine.stop()
        except TimeoutError:  # the stop was cancelled, and with it the engine's tasks
            print(f"  warning: Engine.stop() did not return within {STOP_TIMEOUT:.0f} s", flush=True)


def key(index: int) -> ScheduleKey:
    return ScheduleKey(NAMESPACE, f"s{index:05d}")


def firing_spec(index: int, firing: int, base: datetime.datetime, *, aligned: bool) -> dict[str, Any]:
    """``@every 1s``, anchored at ``base`` plus this Schedule's share of the second (unless aligned)."""
    offset = datetime.timedelta(milliseconds=0 if aligned else round(index * 1000 / firing))
    return {"handler": HANDLER, "method": "tick", "schedule": "@every 1s", "startTime": status.rfc3339(base + offset)}


def rare_spec() -> dict[str, Any]:
    return {"handler": HANDLER, "method": "tick", "schedule": RARE}


def next_second() -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC)
    return now.replace(microsecond=0) + datetime.timedelta(seconds=1)


def uid(name: ScheduleKey) -> str:
    """The same for a Schedule every time it is applied: a new one would mean deleted and re-created."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"schedulezero-bench/{name}"))


async def apply_all(engine: engine_.Engine, specs: dict[ScheduleKey, dict[str, Any]]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    for number, (name, spec) in enumerate(specs.items(), start=1):
        engine.apply_schedule(name, uid=uid(name), spec=spec, created=now, generation=1)
        if number % YIELD_EVERY == 0:
            await asyncio.sleep(0)


def load_specs(loaded: int, firing: int, *, aligned: bool = False) -> dict[ScheduleKey, dict[str, Any]]:
    base = next_second()
    return {
        key(index): firing_spec(index, firing, base, aligned=aligned) if index < firing else rare_spec()
        for index in range(loaded)
    }


# -- measuring --------------------------------------------------------------------


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


class Profile:
    """A pyinstrument profile of the measured windows, written to ``directory/name.txt``; nothing without one."""

    def __init__(self, directory: pathlib.Path | None, name: str) -> None:
        self._directory = directory
        self._name = name
        self._profiler: Any = None
        if directory is not None:
            import pyinstrument  # only with --profile: not a dependency of the benchmarks

            self._profiler = pyinstrument.Profiler(async_mode="disabled")

    def start(self) -> None:
        if self._profiler is not None:
            self._profiler.start()

    def stop(self) -> None:
        if self._profiler is not None:
            self._profiler.stop()

    def save(self) -> None:
        if self._profiler is not None and self._directory is not None:
            self._directory.mkdir(parents=True, exist_ok=True)
            text = self._profiler.output_text(unicode=True, show_all=False)
            (self._directory / f"{self._name}.txt").write_text(text)


@dataclasses.dataclass(frozen=True)
class Window:
    """What one measuring window saw."""

    lateness_ms: list[float]
    seconds: float
    writes: int
    cpu: float

    @property
    def fires_per_s(self) -> float:
        return len(self.lateness_ms) / self.seconds

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.seconds

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.seconds

    def p(self, q: float) -> float:
        return benchlib.percentile(self.lateness_ms, q) if self.lateness_ms else math.nan

    def describe(self) -> str:
        return (
            f"{len(self.lateness_ms):,} fires ({self.fires_per_s:,.1f}/s), lateness p50 {self.p(50):.2f} ms, "
            f"p99 {self.p(99):.2f} ms, max {max(self.lateness_ms, default=math.nan):.2f} ms; "
            f"{self.writes_per_s:,.1f} status writes/s; engine process CPU {self.cpu_percent:.0f}%"
        )


async def measure_window(
    handler: LatenessHandler, sink: CountingSink, args: argparse.Namespace, seconds: float, name: str
) -> Window:
    """Warms up, then collects the handler's samples and the sink's writes over ``seconds``."""
    await asyncio.sleep(args.warm_up)
    await handler.take_samples_ms()
    profile = Profile(args.profile, name)
    writes, cpu, start = sink.writes, cpu_seconds(), time.perf_counter()
    profile.start()
    await asyncio.sleep(seconds)
    profile.stop()
    samples = await handler.take_samples_ms()
    window = Window(samples, time.perf_counter() - start, sink.writes - writes, cpu_seconds() - cpu)
    profile.save()
    print(f"  {name}: {window.describe()}", flush=True)
    return window


@dataclasses.dataclass(frozen=True)
class Case:
    loaded: int
    firing: int
    aligned: bool = False
    goal_ms: float | None = None

    @property
    def name(self) -> str:
        return f"{self.loaded}-loaded-{self.firing}-firing" + ("-aligned" if self.aligned else "")


async def lateness_case(handler: LatenessHandler, case: Case, args: argparse.Namespace) -> Window:
    async with running_engine(handler) as (engine, sink):
        await apply_all(engine, load_specs(case.loaded, case.firing, aligned=case.aligned))
        return await measure_window(handler, sink, args, args.seconds, case.name)


@dataclasses.dataclass
class LargeEngine:
    """The 10,000-Schedule run: memory, time to schedule, lateness and writes by fire rate."""

    rss_before: float = 0.0
    rss_scheduled: float = 0.0
    rss_after: float = 0.0
    applied_s: float = 0.0
    all_written_s: float = 0.0
    lateness: Window | None = None
    by_rate: dict[int, Window] = dataclasses.field(default_factory=dict)


async def wait_all_written(sink: CountingSink, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.scheduled) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(sink.scheduled)} of {count} statuses written with a nextRunTime")
        await asyncio.sleep(0.005)


def check_all_scheduled(engine: engine_.Engine, count: int) -> None:
    scheduled = sum(1 for name in engine.schedule_keys() if (engine.render_status(name) or {}).get("nextRunTime"))
    if scheduled != count:
        raise RuntimeError(f"{scheduled} of {count} Schedules have a nextRunTime")


async def large_engine(handler: LatenessHandler, case: Case, args: argparse.Namespace) -> LargeEngine:
    result = LargeEngine(rss_before=rss_mib())
    async with running_engine(handler) as (engine, sink):
        specs = load_specs(case.loaded, case.firing)
        start = time.perf_counter()
        await apply_all(engine, specs)
        result.applied_s = time.perf_counter() - start
        await wait_all_written(sink, case.loaded, timeout=300.0)
        result.all_written_s = time.perf_counter() - start
        check_all_scheduled(engine, case.loaded)
        result.rss_scheduled = rss_mib()
        print(
            f"  {case.loaded:,} Schedules applied in {result.applied_s:.2f} s, all statuses written "
            f"with a nextRunTime after {result.all_written_s:.2f} s; RSS {result.rss_scheduled:,.0f} MiB",
            flush=True,
        )
        result.lateness = await measure_window(handler, sink, args, args.seconds, case.name)
        result.rss_after = rss_mib()
        for rate in args.rates:
            await apply_all(engine, load_specs(case.loaded, rate))
            result.by_rate[rate] = await measure_window(
                handler, sink, args, args.rate_seconds, f"{case.loaded}-loaded-{rate}-firing-status-writes"
            )
    return result


async def run(endpoint: str, args: argparse.Namespace) -> tuple[dict[Case, Window], LargeEngine]:
    large = Case(args.large, 100, goal_ms=50.0)
    cases = [Case(1, 1), Case(100, 100), Case(1_000, 100, goal_ms=10.0), Case(1_000, 100, aligned=True)]
    async with Client() as client:
        handler = LatenessHandler(client, endpoint)
        await handler.take_samples_ms()  # connected and warm before the first RSS reading
        # The large engine first, so that its RSS reading starts from a process no other engine has grown.
        print(f"{large.loaded:,} Schedules:", flush=True)
        result = await large_engine(handler, large, args)
        assert result.lateness is not None
        windows = {large: result.lateness}
        for case in cases:
            windows[case] = await lateness_case(handler, case, args)
    return windows, result


# -- reporting --------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _loaded(case: Case) -> str:
    if case.aligned:
        return f"{case.loaded:,}, the {case.firing} firing at the same instant"
    return f"{case.loaded:,}"


def lateness_table(windows: dict[Case, Window]) -> str:
    headers = ["Schedules loaded", "firing every 1 s", "fires/s", "fires", "p50 (ms)", "p99 (ms)", "max (ms)"]
    headers += ["engine CPU", "goal (p99)"]
    rows = []
    for case in sorted(windows, key=lambda c: (c.loaded, c.aligned)):
        window = windows[case]
        goal = (
            "—"
            if case.goal_ms is None
            else f"≤ {case.goal_ms:.0f} ms: {benchlib.verdict(window.p(99) <= case.goal_ms)}"
        )
        rows.append(
            [
                _loaded(case),
                f"{case.firing:,}",
                f"{window.fires_per_s:.1f}",
                f"{len(window.lateness_ms):,}",
                _ms(window.p(50)),
                _ms(window.p(99)),
                _ms(max(window.lateness_ms, default=math.nan)),
                f"{window.cpu_percent:.0f}%",
                goal,
            ]
        )
    rows.append(
        [
            "Kubernetes CronJob (known, not measured)",
            "—",
            "≤ 1/60 each",
            "—",
            "seconds",
            "seconds",
            "—",
            "—",
            "1-minute resolution; a pod start per run",
        ]
    )
    return benchlib.markdown_table(headers, rows)


def memory_table(large: LargeEngine, loaded: int) -> str:
    rows = [
        ["process RSS before loading", f"{large.rss_before:,.0f} MiB", ""],
        [f"process RSS with {loaded:,} Schedules scheduled", f"{large.rss_scheduled:,.0f} MiB", ""],
        [
            "process RSS after firing (100/s)",
            f"{large.rss_after:,.0f} MiB (engine: +{large.rss_after - large.rss_before:,.0f} MiB)",
            f"≤ {RSS_GOAL_MIB:.0f} MiB: {benchlib.verdict(large.rss_after <= RSS_GOAL_MIB)}",
        ],
        [f"{loaded:,} calls of apply_schedule (each has its nextRunTime on return)", f"{large.applied_s:.2f} s", ""],
        [
            "first apply_schedule → every status written with a nextRunTime",
            f"{large.all_written_s:.2f} s",
            f"≤ {SCHEDULED_GOAL_S:.0f} s: {benchlib.verdict(large.all_written_s <= SCHEDULED_GOAL_S)}",
        ],
    ]
    return benchlib.markdown_table(["", "measured", "goal"], rows)


def writes_table(large: LargeEngine, loaded: int) -> str:
    headers = ["Schedules firing every 1 s", "fires/s", "status writes/s", "bound: firing / 2 s", "writes per fire"]
    headers += ["lateness p50 / p99 (ms)", "engine CPU", "within bound"]
    rows = []
    for rate, window in large.by_rate.items():
        bound = rate / 2
        rows.append(
            [
                f"{rate:,} of {loaded:,}",
                f"{window.fires_per_s:.1f}",
                f"{window.writes_per_s:.1f}",
                f"{bound:.1f}",
                f"{window.writes / max(1, len(window.lateness_ms)):.2f}",
                f"{_ms(window.p(50))} / {_ms(window.p(99))}",
                f"{window.cpu_percent:.0f}%",
                benchlib.verdict(window.writes_per_s <= bound * 1.02),
            ]
        )
    return benchlib.markdown_table(headers, rows)


# -- running ----------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seconds", type=float, default=24.0, help="lateness measured over this long (a multiple of 2 s, see below)"
    )
    parser.add_argument("--warm-up", type=float, default=5.0, help="seconds of firing before each measurement")
    parser.add_argument("--large", type=int, default=10_000, help="Schedules in the memory and status-write run")
    parser.add_argument(
        "--rates", type=int, nargs="+", default=[10, 100, 500], help="Schedules firing every second, for writes/s"
    )
    parser.add_argument(
        "--rate-seconds",
        type=float,
        default=16.0,
        help="status writes measured over this long; a multiple of the 2 s status interval, since the writes "
        "of Schedules applied together come in bursts every 2 s",
    )
    parser.add_argument(
        "--profile",
        type=pathlib.Path,
        help="write a pyinstrument profile of each window here (pip install pyinstrument first)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    benchlib.stop_on_sigterm()
    endpoint = f"tcp://127.0.0.1:{benchlib.free_port()}"
    # Room for a burst of 100 calls at once (the aligned row); the default allows 64 in flight.
    argv = benchlib.handler_argv(
        LATENESS_HANDLER, endpoint, benchlib.BENCH_DIR, "--idle-timeout", "0", "--max-concurrent-calls", "1024"
    )
    print(benchlib.environment("apscheduler", "pyzmq", "psutil"))
    print(
        f"lateness over {args.seconds:.0f} s per case after {args.warm_up:.0f} s of firing; "
        f"status writes over {args.rate_seconds:.0f} s per rate",
        flush=True,
    )
    with benchlib.serving("lateness handler", argv):
        windows, large = asyncio.run(run(endpoint, args))
    print()
    print("Fire lateness (handler method start - nominal time):")
    print()
    print(lateness_table(windows))
    print()
    print(f"{args.large:,} Schedules in one engine:")
    print()
    print(memory_table(large, args.large))
    print()
    print(f"Status writes by fire rate ({args.large:,} loaded, status interval 2 s):")
    print()
    print(writes_table(large, args.large))


if __name__ == "__main__":
    main()
