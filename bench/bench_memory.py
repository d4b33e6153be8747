"""What each Schedule costs in memory, and the time one watch event of an unchanged Schedule costs.

The engine runs in this process with no handler (no Schedule fires: they run
``0 0 1 1 *``, at midnight on 1 January), once as the owner of every Schedule
and once as a standby that owns none. ``tracemalloc`` attributes what stays
allocated after applying N Schedules to the code that allocated it, grouped
into what a Schedule is made of:

- **trigger**: its parsed schedule (``triggers.py``, ``cron.py``, zoneinfo);
- **APScheduler job**: the job and its place in the job store (``apscheduler``);
- **engine state**: ``ScheduleState``, the spec kept, the history (``engine.py``,
  ``status.py``, ``inputs.py``);
- **metrics**: the Schedule's series (``prometheus_client``, ``metrics.py``);
- **other**: the rest (the keys, the dictionaries indexing them).

RSS (psutil) before and after, measured in a process of its own without
tracing, is shown next to it: the allocator keeps more than Python asks for.
Then, on the standby, the same N Schedules are applied again with a status
as their owner would write it (what a standby sees for every status write):
the time per event, median of five rounds.

Run from the repository root: ``.venv/bin/python bench/bench_memory.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import gc
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import benchlib
import psutil

from schedulezero_handler import Client
from schedulezero_operator import engine as engine_
from schedulezero_operator.sinks import ScheduleKey

NAMESPACE = "bench"
MIB = 1024 * 1024
PARTS = (
    ("trigger", ("schedulezero_operator/triggers.py", "schedulezero_operator/cron.py", "zoneinfo")),
    ("APScheduler job", ("apscheduler/",)),
    ("engine state", ("schedulezero_operator/engine.py", "status.py", "inputs.py", "copy.py", "datetime")),
    ("metrics", ("prometheus_client/", "schedulezero_operator/metrics.py", "schedule_series.py")),
)


class Discard:
    """A status sink and event sink that keeps nothing."""

    async def write_status(self, key: ScheduleKey, status: dict[str, Any]) -> None:
        return None

    def event(self, key: ScheduleKey, *, warning: bool, reason: str, message: str) -> None:
        return None


def spec(index: int) -> dict[str, Any]:
    return {"handler": "h", "method": "tick", "schedule": "0 0 1 1 *", "params": {"n": index}}


def owner_status(created: datetime.datetime) -> dict[str, Any]:
    """A status as an owner writes it between runs: conditions, counters, one run record."""
    at = created.isoformat().replace("+00:00", "Z")
    condition = {"status": "True", "reason": "Scheduled", "message": "next run at ...", "lastTransitionTime": at}
    return {
        "observedGeneration": 1,
        "conditions": [{"type": kind, **condition} for kind in ("Ready", "Suspended", "Completed")],
        "lastScheduleTime": at,
        "counters": {"succeeded": 1, "failed": 0, "missed": 0, "skipped": 0},
        "runs": [{"runId": "00000000-0000-0000-0000-000000000000", "scheduledTime": at, "outcome": "Succeeded"}],
        "nextRunTime": "2027-01-01T00:00:00.000Z",
        "updatedTime": at,
    }


def part_of(filename: str) -> str:
    for name, markers in PARTS:
        if any(marker in filename for marker in markers):
            return name
    return "other"


async def load(count: int, *, owned: bool, traced: bool) -> tuple[dict[str, float], float]:
    """Applies ``count`` Schedules: with ``traced``, bytes per Schedule by part (tracemalloc, whose own
    bookkeeping inflates RSS); without, RSS per Schedule."""
    async with Client() as client:
        sink = Discard()
        engine = engine_.Engine(client=client, status_sink=sink, events=sink, owner=lambda key: owned)
        await engine.start()
        created = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        gc.collect()
        rss_before = psutil.Process().memory_info().rss
        if traced:
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
        for index in range(count):
            key = ScheduleKey(NAMESPACE, f"s-{index:06d}")
            engine.apply_schedule(key, uid=f"uid-{index}", spec=spec(index), created=created)
            if index % 100 == 0:
                await asyncio.sleep(0)
        gc.collect()
        rss = (psutil.Process().memory_info().rss - rss_before) / count
        parts: collections.Counter[str] = collections.Counter()
        if traced:
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            for stat in after.compare_to(before, "filename"):
                parts[part_of(stat.traceback[0].filename)] += stat.size_diff
        await engine.stop()
    return {name: size / count for name, size in parts.items()}, rss


async def event_cost(count: int) -> float:
    """Seconds per watch event of an unchanged Schedule carrying its owner's new status, on a standby."""
    async with Client() as client:
        sink = Discard()
        engine = engine_.Engine(client=client, status_sink=sink, events=sink, owner=lambda key: False)
        await engine.start()
        created = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        specs = [spec(index) for index in range(count)]
        keys = [ScheduleKey(NAMESPACE, f"s-{index:06d}") for index in range(count)]
        for key, index in zip(keys, range(count), strict=True):
            engine.apply_schedule(key, uid=f"uid-{index}", spec=specs[index], created=created)
        status = owner_status(created)
        rounds = []
        for _ in range(5):
            start = time.perf_counter()
            for index, key in enumerate(keys):
                engine.apply_schedule(key, uid=f"uid-{index}", spec=specs[index], created=created, status_=status)
            rounds.append((time.perf_counter() - start) / count)
            await asyncio.sleep(0)
        await engine.stop()
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--rss-of", choices=["owner", "standby"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_of:  # a process of its own: memory freed by an earlier load would be reused and hide the cost
        print(asyncio.run(load(args.schedules, owned=args.rss_of == "owner", traced=False))[1])
        return
    print(benchlib.environment("apscheduler", "prometheus_client"))
    rows = []
    totals = []
    for owned in (True, False):
        argv = [
            sys.executable,
            __file__,
            "--schedules",
            str(args.schedules),
            "--rss-of",
            "owner" if owned else "standby",
        ]
        rss = float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()[-1])
        parts, _ = asyncio.run(load(args.schedules, owned=owned, traced=True))
        totals.append((owned, sum(parts.values()), rss))
        role = "owner" if owned else "standby"
        for name in [*(name for name, _ in PARTS), "other"]:
            rows.append([role, name, f"{parts.get(name, 0.0):,.0f} B"])
    print()
    print(f"Bytes per Schedule still allocated after applying {args.schedules:,} (tracemalloc):")
    print()
    print(benchlib.markdown_table(["replica", "part", "per Schedule"], rows))
    print()
    for owned, total, rss in totals:
        role = "owner" if owned else "standby"
        print(f"{role}: {total:,.0f} B per Schedule traced, RSS {rss:,.0f} B per Schedule")
        print(f"    at 100,000 Schedules: {total * 100_000 / MIB:,.0f} MiB traced, {rss * 100_000 / MIB:,.0f} MiB RSS")
    per_event = asyncio.run(event_cost(args.schedules))
    print()
    print(f"a standby's watch event of an unchanged Schedule with a new status: {per_event * 1e6:.1f} µs (engine only)")


if __name__ == "__main__":
    main()
