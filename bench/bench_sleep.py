"""Handler sleep: memory released while asleep, and what the first call after it costs.

The reference handler ``examples/handlers/cache_handler.py:CacheHandler`` holds
a large cache (``cache_entries``, default 500,000), which ``on_sleep`` drops and
``on_wake`` rebuilds. Two processes serve it with ``--idle-timeout 0`` (no idle
sleep, so only the explicit ``sys.sleep`` calls put it to sleep):

- the sleeping handler goes through several cycles of ``sys.sleep`` → first
  call (X: the call wakes the handler, which runs ``on_wake`` before it).
  The handler times its own ``on_wake`` (W, ``last_wake_ms``), so X - W of
  the same cycle is what waking on a call costs beyond the hook: the goal;
- the same handler never sleeping, for its memory and call latency.

Memory is the resident size the handler reports in ``sys.metrics``. The table
shows medians over the cycles. Run from the repository root:
``.venv/bin/python bench/bench_sleep.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import tempfile
import time
from typing import Any

import benchlib

from schedulezero_handler import Client

CACHE_HANDLER = "cache_handler:CacheHandler"
APP_DIR = benchlib.REPO / "examples" / "handlers"
LOOKUP: dict[str, Any] = {"key": "customer-123"}
MIB = 1024 * 1024
FIRST_CALL_GOAL_MS = 50.0
SLEEPING_RSS_GOAL = 0.30


@dataclasses.dataclass(frozen=True)
class ServedHandler:
    """A served handler process and a client to it."""

    client: Client
    endpoint: str

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.client.call(self.endpoint, method, params, timeout=120.0)

    async def timed_ms(self, method: str, params: dict[str, Any] | None = None) -> float:
        start = time.perf_counter()
        await self.call(method, params)
        return (time.perf_counter() - start) * 1000

    async def rss(self) -> int:
        metrics = await self.call("sys.metrics")
        return int(metrics["resident_memory_bytes"])

    async def lookup_ms(self, count: int) -> tuple[float, float]:
        """p50 and p99 of ``count`` lookups, one at a time."""
        samples = [await self.timed_ms("lookup", LOOKUP) for _ in range(count)]
        return benchlib.percentile(samples, 50), benchlib.percentile(samples, 99)


@dataclasses.dataclass(frozen=True)
class Cycle:
    """One sleep, then the first call, which wakes the handler."""

    sleep_ms: float
    rss_sleeping: int
    first_call_after_sleep_ms: float
    """X: the round trip of the call that woke the handler."""
    on_wake_ms: float
    """W: ``on_wake`` of this very wake, as the handler timed it."""
    rss_woken: int

    @property
    def wake_on_call_ms(self) -> float:
        """X - W: what the call paid beyond the hook (the wake itself, the call, the round trip)."""
        return self.first_call_after_sleep_ms - self.on_wake_ms

    def describe(self) -> str:
        return (
            f"sleep {self.sleep_ms:,.0f} ms, RSS asleep {_mib(self.rss_sleeping)} MiB, "
            f"first call after sleep {self.first_call_after_sleep_ms:,.1f} ms of which on_wake "
            f"{self.on_wake_ms:,.1f} ms, RSS woken {_mib(self.rss_woken)} MiB"
        )


@dataclasses.dataclass(frozen=True)
class Measured:
    rss_active: int
    lookup_p50_ms: float
    lookup_p99_ms: float
    cycles: list[Cycle]


async def go_to_sleep(handler: ServedHandler) -> float:
    start = time.perf_counter()
    state = await handler.call("sys.sleep")
    if state != {"state": "sleeping"}:
        raise AssertionError(f"sys.sleep answered {state!r}")
    return (time.perf_counter() - start) * 1000


async def sleep_cycle(handler: ServedHandler) -> Cycle:
    sleep_ms = await go_to_sleep(handler)
    rss_sleeping = await handler.rss()
    first_call_after_sleep_ms = await handler.timed_ms("lookup", LOOKUP)
    on_wake_ms = float(await handler.call("last_wake_ms"))
    rss_woken = await handler.rss()
    return Cycle(sleep_ms, rss_sleeping, first_call_after_sleep_ms, on_wake_ms, rss_woken)


async def check_cache(handler: ServedHandler, entries: int) -> None:
    size = await handler.call("size")
    if size != entries:
        raise AssertionError(f"the cache holds {size} entries, expected {entries}")


async def measure_active(handler: ServedHandler, args: argparse.Namespace) -> tuple[int, float, float]:
    """RSS and lookup latency of an active handler, after a warm-up."""
    for _ in range(args.warm_up):
        await handler.call("lookup", LOOKUP)
    await check_cache(handler, args.cache_entries)
    p50, p99 = await handler.lookup_ms(args.lookups)
    return await handler.rss(), p50, p99


async def measure(endpoint: str, args: argparse.Namespace, *, sleeps: bool) -> Measured:
    async with Client() as client:
        handler = ServedHandler(client, endpoint)
        rss_active, p50, p99 = await measure_active(handler, args)
        cycles: list[Cycle] = []
        for number in range(1, (args.cycles if sleeps else 0) + 1):
            cycles.append(await sleep_cycle(handler))
            print(f"  cycle {number}: {cycles[-1].describe()}", flush=True)
        await check_cache(handler, args.cache_entries)
        return Measured(rss_active, p50, p99, cycles)


def serve_and_measure(config: pathlib.Path, args: argparse.Namespace, *, sleeps: bool) -> Measured:
    endpoint = f"tcp://127.0.0.1:{benchlib.free_port()}"
    argv = benchlib.handler_argv(CACHE_HANDLER, endpoint, APP_DIR, "--config", str(config), "--idle-timeout", "0")
    name = "sleeping handler" if sleeps else "never-sleeping handler"
    print(f"{name}:", flush=True)
    with benchlib.serving(name, argv, timeout=300.0):
        return asyncio.run(measure(endpoint, args, sleeps=sleeps))


# -- reporting --------------------------------------------------------------------


def _median(measured: Measured, field: str) -> float:
    """The median over the cycles of one ``Cycle`` field or property."""
    return benchlib.median([float(getattr(cycle, field)) for cycle in measured.cycles])


def _mib(size: float) -> str:
    return f"{size / MIB:,.0f}"


def _spread(measured: Measured, field: str, digits: int = 0) -> str:
    """Median [min, max] over the cycles."""
    values = [float(getattr(cycle, field)) for cycle in measured.cycles]
    return f"{benchlib.median(values):,.{digits}f} [{min(values):,.{digits}f}, {max(values):,.{digits}f}]"


def table(sleeping: Measured, never: Measured) -> str:
    rss_sleeping = _median(sleeping, "rss_sleeping")
    rows = [
        ["RSS active (MiB)", _mib(sleeping.rss_active), _mib(never.rss_active)],
        ["RSS sleeping (MiB)", f"{_mib(rss_sleeping)} ({rss_sleeping / sleeping.rss_active:.0%} of active)", "—"],
        [
            "RSS sleeping, first / last cycle (MiB)",
            f"{_mib(sleeping.cycles[0].rss_sleeping)} / {_mib(sleeping.cycles[-1].rss_sleeping)}",
            "—",
        ],
        ["RSS after waking (MiB)", _mib(_median(sleeping, "rss_woken")), "—"],
        [
            "lookup round trip p50 / p99, active (ms)",
            f"{sleeping.lookup_p50_ms:.2f} / {sleeping.lookup_p99_ms:.2f}",
            f"{never.lookup_p50_ms:.2f} / {never.lookup_p99_ms:.2f}",
        ],
        ["sys.sleep, median [min, max] (ms)", _spread(sleeping, "sleep_ms"), "—"],
        ["X: first call after sleep, it wakes the handler (ms)", _spread(sleeping, "first_call_after_sleep_ms"), "—"],
        ["W: on_wake of that wake, timed by the handler (ms)", _spread(sleeping, "on_wake_ms"), "—"],
        ["X - W: waking on a call, beyond on_wake (ms)", _spread(sleeping, "wake_on_call_ms", 2), "—"],
    ]
    return benchlib.markdown_table(["", "sleeping handler", "never-sleeping handler"], rows)


def goals(sleeping: Measured) -> list[str]:
    ratio = _median(sleeping, "rss_sleeping") / sleeping.rss_active
    worst = max(cycle.wake_on_call_ms for cycle in sleeping.cycles)
    return [
        f"- sleeping RSS ≤ {SLEEPING_RSS_GOAL:.0%} of active: {ratio:.0%} "
        f"— {benchlib.verdict(ratio <= SLEEPING_RSS_GOAL)}",
        f"- first call after sleep ≤ on_wake + {FIRST_CALL_GOAL_MS:.0f} ms, in every cycle: X - W at most "
        f"{worst:.2f} ms (median {_median(sleeping, 'wake_on_call_ms'):.2f} ms) "
        f"— {benchlib.verdict(worst <= FIRST_CALL_GOAL_MS)}",
    ]


# -- running ----------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-entries", type=int, default=500_000, help="size of the handler's cache")
    parser.add_argument("--cycles", type=int, default=7, help="sleep cycles; the table shows their medians")
    parser.add_argument("--lookups", type=int, default=2_000, help="calls per latency measurement")
    parser.add_argument("--warm-up", type=int, default=200, help="calls before measuring")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    benchlib.stop_on_sigterm()
    print(benchlib.environment("pyzmq", "psutil"))
    print(f"CacheHandler with {args.cache_entries:,} entries; {args.cycles} sleep cycles", flush=True)
    with tempfile.TemporaryDirectory(prefix="schedulezero-bench-") as directory:
        config = pathlib.Path(directory) / "config.yaml"
        config.write_text(f"cache_entries: {args.cache_entries}\n")
        never = serve_and_measure(config, args, sleeps=False)
        sleeping = serve_and_measure(config, args, sleeps=True)
    print()
    print(table(sleeping, never))
    print()
    print("\n".join(goals(sleeping)))


if __name__ == "__main__":
    main()
