"""Throughput of one Handler with 1, 2 and 4 replicas, calls driven by Schedules.

Each replica is a real handler process (``work_handler:WorkHandler``, whose
``work`` spends about 5 ms of CPU in a worker thread) on a loopback address of
its own, all on one port, as pods behind a Service are. The engine runs in
this process and routes each run by its run id over the replicas, as the
operator does with the pods of a Service's EndpointSlices.

- **engine**: ``--offered`` Schedules ``@every 1s``, spread over the second,
  more than the replicas can serve; the rate of runs that succeed, measured
  over ``--window`` seconds after a warm-up.
- **floor**: the same replicas called by a ``Client`` alone, as fast as they
  answer (64 calls in flight per replica, routed the same way): what the
  replicas can do with no scheduling at all.

A replica is one Python process: its CPU-bound work holds the GIL, so one
replica uses at most one core, and scaling stops at the machine's cores.
Each repetition measures every count in turn, each with replicas started for
it; the table shows the medians of the rates, and of the ratios taken within
each repetition (engine ÷ floor of the same count, engine at a count ÷ engine
at one replica in the same repetition).

Run from the repository root: ``.venv/bin/python bench/bench_replicas.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import statistics
import time
from typing import Any

import bench_engine
import benchlib

from schedulezero_handler import Client, client, protocol, routing
from schedulezero_operator import engine as engine_
from schedulezero_operator import status
from schedulezero_operator.sinks import ScheduleKey

WORK_HANDLER = "work_handler:WorkHandler"
WORK_MS = 5.0
IN_FLIGHT_PER_REPLICA = 64


class Succeeded:
    """The engine's RunObserver: counts runs that succeeded, from a moment on."""

    def __init__(self) -> None:
        self.count = 0
        self.failed = 0

    def run_finished(self, key: ScheduleKey, record: dict[str, Any]) -> None:
        if record["outcome"] == "Succeeded":
            self.count += 1
        else:
            self.failed += 1


async def engine(endpoints: list[str], args: argparse.Namespace) -> tuple[float, int]:
    """Runs that succeed per second, and how many did not, with ``--offered`` Schedules a second."""
    observed = Succeeded()
    async with Client(context=client.context_for(len(endpoints))) as calls:
        engine = engine_.Engine(client=calls, status_sink=bench_engine.CountingSink(), observer=observed)
        await engine.start()
        info = engine_.HandlerInfo(endpoints[0], frozenset({"work"}), replicas=tuple(endpoints))
        engine.set_handler(bench_engine.NAMESPACE, "work", info)
        base = bench_engine.next_second() + datetime.timedelta(seconds=1)
        specs = {
            bench_engine.key(index): {
                "handler": "work",
                "method": "work",
                "params": {"ms": WORK_MS},
                "schedule": "@every 1s",
                "startTime": status.rfc3339(base + datetime.timedelta(milliseconds=index * 1000 // args.offered)),
                "timeoutSeconds": 5,
                "retry": {"maxAttempts": 1},
            }
            for index in range(args.offered)
        }
        try:
            await bench_engine.apply_all(engine, specs)
            await asyncio.sleep(args.warmup + 1)
            before, failed, started = observed.count, observed.failed, time.monotonic()
            await asyncio.sleep(args.window)
            rate = (observed.count - before) / (time.monotonic() - started)
            return rate, observed.failed - failed
        finally:
            await engine.stop()


async def floor(endpoints: list[str], args: argparse.Namespace) -> float:
    """Calls per second that the replicas answer to a client alone, routed by call id."""
    done = 0
    deadline = time.monotonic() + args.warmup + args.window
    measuring_from = time.monotonic() + args.warmup
    counted_from = 0

    async def caller(calls: Client) -> None:
        nonlocal done, counted_from
        while time.monotonic() < deadline:
            call_id = os.urandom(16)
            endpoint = routing.choose(call_id, endpoints)
            assert endpoint is not None
            call = protocol.Call(call_id=call_id, method="work", params={"ms": WORK_MS}, timeout_ms=5000, attempt=1)
            with contextlib.suppress(Exception):
                await calls.attempt(endpoint, call)
                done += 1
                if time.monotonic() < measuring_from:
                    counted_from = done

    async with Client(context=client.context_for(len(endpoints))) as calls:
        await asyncio.gather(*(caller(calls) for _ in range(IN_FLIGHT_PER_REPLICA * len(endpoints))))
    return (done - counted_from) / args.window


def table(results: dict[int, dict[str, list[float]]]) -> str:
    """Medians of the rates, and medians of the ratios taken within each repetition."""
    headers = ["replicas", "floor: calls/s", "engine: runs/s", "engine ÷ floor", "engine vs 1 replica"]
    rows = []
    one = results[min(results)]["engine"]
    for count, row in results.items():
        of_floor = [engine_rate / floor_ for engine_rate, floor_ in zip(row["engine"], row["floor"], strict=True)]
        of_one = [engine_rate / first for engine_rate, first in zip(row["engine"], one, strict=True)]
        rows.append(
            [
                str(count),
                f"{statistics.median(row['floor']):,.0f}",
                f"{statistics.median(row['engine']):,.0f}",
                f"{statistics.median(of_floor):.2f}",
                f"{statistics.median(of_one):.2f} x",
            ]
        )
    return benchlib.markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--offered", type=int, default=800, help="Schedules @every 1s: runs offered per second")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    benchlib.stop_on_sigterm()
    port = benchlib.free_port()
    print(benchlib.environment("apscheduler", "pyzmq"))
    print(f"{os.cpu_count()} CPUs; work {WORK_MS:.0f} ms of CPU per call; {args.offered} runs offered per second")
    results = {count: {"floor": list[float](), "engine": list[float]()} for count in args.replicas}
    for repetition in range(args.repetitions):  # every count in each repetition: its ratios compare like with like
        for count, row in results.items():
            endpoints = [f"tcp://127.0.0.{2 + index}:{port}" for index in range(count)]
            with contextlib.ExitStack() as stack:
                for index, endpoint in enumerate(endpoints):
                    options = ("--idle-timeout", "0")
                    argv = benchlib.handler_argv(WORK_HANDLER, endpoint, benchlib.BENCH_DIR, *options)
                    stack.enter_context(benchlib.serving(f"replica {index}", argv))
                row["floor"].append(asyncio.run(floor(endpoints, args)))
                rate, failed = asyncio.run(engine(endpoints, args))
                row["engine"].append(rate)
            print(
                f"  repetition {repetition + 1}, {count} replicas: floor {row['floor'][-1]:,.0f} calls/s, "
                f"engine {rate:,.0f} runs/s ({failed} runs not succeeded)",
                flush=True,
            )
    print()
    print("Runs per second that one Handler's replicas complete (5 ms of CPU each):")
    print()
    print(table(results))


if __name__ == "__main__":
    main()
