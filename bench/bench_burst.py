"""Schedules due at the same instant: how late the last call starts, against the floor of sending the calls.

Cron times bunch up (``0 * * * *``, ``@daily``), so thousands of Schedules can
be due at one instant. The engine runs in this process and calls a real handler
process (``lateness_handler:LatenessHandler``, as ``bench_engine.py``), whose
``tick`` records its start minus the run's nominal time.

- **engine**: N Schedules (``@every 3600s``, all with the same ``startTime``)
  in a new engine; lateness of every run's call at the handler.
- **floor**: the same N calls (method, nominal time) sent at that instant by a
  ``Client`` alone, all at once: what one client and one handler process take
  for N calls, with no scheduling at all.

Each size runs ``--repetitions`` times, floor and engine side by side; the
table shows medians of p50 and of the last call's lateness, and the median of
the engine ÷ floor ratios within each repetition.

Run from the repository root: ``.venv/bin/python bench/bench_burst.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
from collections.abc import Awaitable, Callable

import bench_engine
import benchlib

from schedulezero_handler import Client, protocol
from schedulezero_operator import status

GOALS_MS = {1_000: 30.0, 10_000: 250.0}
"""The last call's lateness each size should reach."""
RATIO_GOAL = 1.5
"""The engine's last call against the floor's, at the sizes with a goal: the engine's own share of a burst."""
LEAD = datetime.timedelta(seconds=2)
"""From setting up a burst to its instant."""
REPLY_WAIT = 10.0
"""How long the floor waits for its replies once every call has started at the handler."""


async def _collect(handler: bench_engine.LatenessHandler, count: int, timeout: float = 60.0) -> list[float]:
    samples: list[float] = []
    async with asyncio.timeout(timeout):
        while len(samples) < count:
            await asyncio.sleep(0.2)
            samples += await handler.take_samples_ms()
    return samples


async def _until(instant: datetime.datetime) -> None:
    await asyncio.sleep(max(0.0, (instant - datetime.datetime.now(datetime.UTC)).total_seconds()))


async def floor(handler: bench_engine.LatenessHandler, count: int) -> list[float]:
    instant = bench_engine.next_second() + LEAD
    nominal = status.rfc3339(instant)
    calls = [
        protocol.Call(
            call_id=os.urandom(16),
            method="tick",
            params={},
            timeout_ms=60_000,
            attempt=1,
            schedule=f"{bench_engine.NAMESPACE}/floor-{index}",
            scheduled_time=nominal,
        )
        for index in range(count)
    ]
    await handler.take_samples_ms()
    await _until(instant)
    sent = [asyncio.ensure_future(handler.client.attempt(handler.endpoint, call)) for call in calls]
    samples = await _collect(handler, count)
    # A handler answering faster than this client reads loses replies beyond ZeroMQ's high-water marks (the
    # calls ran: the samples say so); they are counted, not waited for until their deadline.
    _, unanswered = await asyncio.wait(sent, timeout=REPLY_WAIT)
    for task in unanswered:
        task.cancel()
    await asyncio.gather(*sent, return_exceptions=True)
    if unanswered:
        print(f"  floor: {len(unanswered)} of {count} replies did not arrive within {REPLY_WAIT:.0f} s", flush=True)
    return samples


async def engine(handler: bench_engine.LatenessHandler, count: int) -> list[float]:
    async with bench_engine.running_engine(handler) as (engine_, _):
        instant = bench_engine.next_second() + LEAD + datetime.timedelta(seconds=count / 1_000)  # room to apply
        spec = {
            "handler": bench_engine.HANDLER,
            "method": "tick",
            "schedule": "@every 3600s",
            "startTime": status.rfc3339(instant),
        }
        await bench_engine.apply_all(engine_, {bench_engine.key(index): dict(spec) for index in range(count)})
        await handler.take_samples_ms()
        await _until(instant)
        return await _collect(handler, count)


Row = dict[str, list[float]]


async def run(endpoint: str, args: argparse.Namespace) -> dict[int, Row]:
    results: dict[int, Row] = {}
    async with Client() as client:
        handler = bench_engine.LatenessHandler(client, endpoint)
        await handler.take_samples_ms()
        for count in args.sizes:
            row: Row = {"floor p50": [], "floor max": [], "engine p50": [], "engine max": [], "ratio": []}
            for repetition in range(args.repetitions):
                measured: dict[str, list[float]] = {}
                way: Callable[[bench_engine.LatenessHandler, int], Awaitable[list[float]]]
                for name, way in (("floor", floor), ("engine", engine)):
                    samples = await way(handler, count)
                    measured[name] = samples
                    row[f"{name} p50"].append(benchlib.percentile(samples, 50))
                    row[f"{name} max"].append(max(samples))
                ratio = max(measured["engine"]) / max(measured["floor"])
                row["ratio"].append(ratio)
                print(
                    f"  {count:,} at once, repetition {repetition + 1}: last call floor "
                    f"{max(measured['floor']):.1f} ms, engine {max(measured['engine']):.1f} ms ({ratio:.2f} x)",
                    flush=True,
                )
            results[count] = row
    return results


def table(results: dict[int, Row]) -> str:
    headers = ["Schedules due at once", "floor p50 / last (ms)", "engine p50 / last (ms)", "engine ÷ floor (last)"]
    headers += ["goal (last)", f"goal ≤ {RATIO_GOAL} x the floor"]
    rows = []
    for count, row in results.items():
        last = statistics.median(row["engine max"])
        goal = GOALS_MS.get(count)
        ratio = statistics.median(row["ratio"])
        rows.append(
            [
                f"{count:,}",
                f"{statistics.median(row['floor p50']):.1f} / {statistics.median(row['floor max']):.1f}",
                f"{statistics.median(row['engine p50']):.1f} / {last:.1f}",
                f"{ratio:.2f} x",
                "—" if goal is None else f"≤ {goal:.0f} ms: {benchlib.verdict(last <= goal)}",
                "—" if goal is None else benchlib.verdict(ratio <= RATIO_GOAL),
            ]
        )
    return benchlib.markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000], help="Schedules due at once")
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    benchlib.stop_on_sigterm()
    endpoint = f"tcp://127.0.0.1:{benchlib.free_port()}"
    # Room for the whole burst in flight: this measures dispatch, not the handler's Busy limit.
    room = str(max(args.sizes) + 1)
    options = ("--idle-timeout", "0", "--max-concurrent-calls", room)
    argv = benchlib.handler_argv(bench_engine.LATENESS_HANDLER, endpoint, benchlib.BENCH_DIR, *options)
    print(benchlib.environment("apscheduler", "pyzmq"))
    with benchlib.serving("lateness handler", argv):
        results = asyncio.run(run(endpoint, args))
    print()
    print("Lateness at the handler of N calls due at the same instant (method start - nominal time):")
    print()
    print(table(results))


if __name__ == "__main__":
    main()
