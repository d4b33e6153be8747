"""Conductor: scraping 100 and 1,000 handlers in parallel against one at a time, and /metrics from the cache.

The handlers are light in-process servers on real sockets, in two processes of
their own; the conductor's Scraper and Collector run in this process, as they
do in ``schedulezero conductor``. Goals (README, Performance): 100 handlers scraped in
at most 1 s, 1,000 in at most 5 s; /metrics in at most 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import time
import urllib.request
from collections.abc import Iterator

import benchlib
from prometheus_client import CollectorRegistry

from schedulezero_conductor import collector, discovery, exposition, scraper
from schedulezero_handler import client as client_

ROUNDS = 5


@contextlib.contextmanager
def handlers(count: int) -> Iterator[dict[str, str]]:
    """``count`` handlers served by two processes (one per core)."""
    halves = [count // 2, count - count // 2]
    with contextlib.ExitStack() as stack:
        endpoints: list[str] = []
        for index, half in enumerate(halves):
            server = stack.enter_context(
                benchlib.serving(
                    f"handlers-{index}", [benchlib.PYTHON, str(benchlib.BENCH_DIR / "many_handlers.py"), str(half)]
                )
            )
            endpoints += [line for line in server.output().splitlines() if line.startswith("tcp://")]
        yield {f"bench/h{i}": endpoint for i, endpoint in enumerate(endpoints)}


async def parallel_rounds(targets: dict[str, str]) -> tuple[list[float], scraper.Scraper, client_.Client]:
    client = client_.Client(context=client_.context_for(len(targets)))
    scrape = scraper.Scraper(
        client, discovery.ConfigDiscovery(None, [{"name": n, "endpoint": e} for n, e in targets.items()]), timeout=5
    )
    durations = []
    for _ in range(ROUNDS + 1):  # the first round also connects
        started = time.perf_counter()
        await scrape.scrape()
        durations.append(time.perf_counter() - started)
    up = sum(1 for s in scrape.cache.values() if s.up)
    assert up == len(targets), f"only {up} of {len(targets)} handlers answered"
    return durations[1:], scrape, client


async def sequential_rounds(client: client_.Client, targets: dict[str, str], rounds: int) -> list[float]:
    durations = []
    for _ in range(rounds):
        started = time.perf_counter()
        for endpoint in targets.values():
            await client.call(endpoint, "sys.metrics", timeout=5)
        durations.append(time.perf_counter() - started)
    return durations


def metrics_latency(scrape: scraper.Scraper, samples: int = 50) -> list[float]:
    """GET /metrics as the conductor serves it: rendered after the last round, from the cache."""
    registry = CollectorRegistry()
    registry.register(collector.HandlerCollector(scrape))
    served = exposition.CachedExposition(registry)
    port = served.serve(host="127.0.0.1", port=0)
    try:
        latencies = []
        for _ in range(samples):
            started = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                response.read()
            latencies.append(time.perf_counter() - started)
        return latencies
    finally:
        served.stop()


async def measure(count: int) -> list[str]:
    with handlers(count) as targets:
        parallel, scrape, client = await parallel_rounds(targets)
        sequential = await sequential_rounds(client, targets, rounds=2 if count > 100 else ROUNDS)
        latency = await asyncio.to_thread(metrics_latency, scrape)
        await client.close()
    goal = 1.0 if count <= 100 else 5.0
    p50 = benchlib.median(parallel)
    return [
        f"{count:,}",
        f"{p50 * 1000:,.0f} ms",
        f"{benchlib.median(sequential) * 1000:,.0f} ms",
        f"{benchlib.median(sequential) / p50:.1f}x",
        f"{benchlib.median(latency) * 1000:.1f} ms / {benchlib.percentile(latency, 99) * 1000:.1f} ms",
        f"≤ {goal:.0f} s: {benchlib.verdict(p50 <= goal)}; "
        f"/metrics ≤ 50 ms: {benchlib.verdict(benchlib.percentile(latency, 99) <= 0.05)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    benchlib.stop_on_sigterm()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(benchlib.environment("pyzmq", "prometheus-client"))
    rows = [asyncio.run(measure(count)) for count in args.counts]
    headers = ["handlers", "parallel round (median)", "sequential round", "speed-up", "/metrics p50 / p99", "goals"]
    print(benchlib.markdown_table(headers, rows))


if __name__ == "__main__":
    main()
