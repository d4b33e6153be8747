"""Call round trip (1 in flight) and throughput (64 in flight): the handler runtime against its floor and HTTP.

Three servers, each its own process, answer ``{"value": V}`` with ``V``:

- schedulezero: ``schedulezero handler echo_handler:EchoHandler`` (ROUTER), called
  with ``schedulezero_handler.Client`` (one DEALER, all calls multiplexed on it);
- the floor: raw pyzmq REP + msgpack (``peer_servers.py``). Round trips use one
  blocking REQ socket. A REQ socket carries one call at a time, so throughput
  uses as many REQ sockets as calls in flight, one asyncio task each;
- aiohttp: HTTP/1.1 + JSON (``peer_servers.py``), called with one keep-alive
  ``aiohttp.ClientSession`` limited to as many connections as calls in flight.

Within a repetition the transports take turns, a block of calls each, so that
the machine's noise spreads over all of them; the table shows medians over the
repetitions. Run from the repository root: ``.venv/bin/python bench/bench_calls.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import benchlib
import msgpack
import zmq
import zmq.asyncio

from schedulezero_handler import Client

PAYLOAD: dict[str, Any] = {"value": {"id": 123, "name": "x" * 50}}
ECHO_HANDLER = "echo_handler:EchoHandler"

Call = Callable[[], Awaitable[Any]]

FLOOR = "pyzmq REQ/REP + msgpack (floor)"
SCHEDULEZERO = "schedulezero Client + Server"
AIOHTTP = "aiohttp HTTP/1.1 + JSON"
CALL_TIMEOUT = 10.0
"""Seconds before a call fails instead of hanging the benchmark."""


@dataclasses.dataclass(frozen=True)
class Transport:
    """How to make one call (round trips) and the callers that keep N calls in flight (throughput)."""

    name: str
    one: Call
    many: Sequence[Call] | None
    """None: this transport's throughput is measured by another row."""


@dataclasses.dataclass
class Samples:
    """Per-repetition results of one transport."""

    p50_us: list[float] = dataclasses.field(default_factory=list)
    p99_us: list[float] = dataclasses.field(default_factory=list)
    calls_per_s: list[float] = dataclasses.field(default_factory=list)


# -- transports -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def schedulezero_transport(endpoint: str, in_flight: int) -> AsyncIterator[Transport]:
    async with Client() as client:
        call = functools.partial(client.call, endpoint, "echo", PAYLOAD, timeout=CALL_TIMEOUT)
        yield Transport(SCHEDULEZERO, call, [call] * in_flight)


def _blocking_req_call(socket: zmq.Socket[bytes]) -> Call:
    async def call() -> Any:
        socket.send(msgpack.packb(PAYLOAD))
        return msgpack.unpackb(socket.recv())

    return call


def _async_req_call(socket: zmq.asyncio.Socket) -> Call:
    async def call() -> Any:
        await socket.send(msgpack.packb(PAYLOAD))
        return msgpack.unpackb(await socket.recv())

    return call


@contextlib.asynccontextmanager
async def req_rep_transports(endpoint: str, in_flight: int) -> AsyncIterator[list[Transport]]:
    """The floor (blocking REQ round trips, N asyncio REQ sockets), and one asyncio REQ for comparison."""
    blocking_context = zmq.Context()
    async_context = zmq.asyncio.Context()
    blocking = blocking_context.socket(zmq.REQ)
    sockets = [async_context.socket(zmq.REQ) for _ in range(in_flight)]
    try:
        for socket in [blocking, *sockets]:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVTIMEO, int(CALL_TIMEOUT * 1000))
            socket.connect(endpoint)
        yield [
            Transport(FLOOR, _blocking_req_call(blocking), [_async_req_call(s) for s in sockets]),
            Transport("pyzmq REQ/REP + msgpack, asyncio client", _async_req_call(sockets[0]), None),
        ]
    finally:
        for socket in [blocking, *sockets]:
            socket.close(linger=0)
        blocking_context.term()
        async_context.term()


@contextlib.asynccontextmanager
async def aiohttp_transport(url: str, in_flight: int) -> AsyncIterator[Transport]:
    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call() -> Any:
            async with session.post(url, json=PAYLOAD) as response:
                response.raise_for_status()
                return await response.json()

        yield Transport(AIOHTTP, call, [call] * in_flight)


# -- measuring --------------------------------------------------------------------


@dataclasses.dataclass
class Repetition:
    """One repetition of one transport, accumulated over its blocks."""

    latencies_us: list[float] = dataclasses.field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0


async def round_trips_us(call: Call, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


async def _repeat(call: Call, count: int) -> None:
    for _ in range(count):
        await call()


async def timed_calls(callers: Sequence[Call], total: int) -> tuple[int, float]:
    """(calls, seconds): each caller makes its share of ``total`` calls in turn, all callers at once."""
    share = total // len(callers)
    start = time.perf_counter()
    await asyncio.gather(*(_repeat(call, share) for call in callers))
    return share * len(callers), time.perf_counter() - start


async def warm_up(transport: Transport, calls: int) -> None:
    reply = await transport.one()
    if reply != PAYLOAD["value"]:
        raise AssertionError(f"{transport.name} answered {reply!r}, expected {PAYLOAD['value']!r}")
    await _repeat(transport.one, calls)
    if transport.many is not None:
        await timed_calls(transport.many, calls)


async def measure_block(transport: Transport, repetition: Repetition, args: argparse.Namespace) -> None:
    repetition.latencies_us += await round_trips_us(transport.one, args.round_trips // args.blocks)
    if transport.many is not None:
        calls, seconds = await timed_calls(transport.many, args.throughput_calls // args.blocks)
        repetition.calls += calls
        repetition.seconds += seconds


async def measure_repetition(transports: Sequence[Transport], args: argparse.Namespace) -> dict[str, Repetition]:
    """Measures the transports in turn, a block each at a time, so that noise spreads over all of them."""
    repetitions = {transport.name: Repetition() for transport in transports}
    for _ in range(args.blocks):
        for transport in transports:
            await measure_block(transport, repetitions[transport.name], args)
    return repetitions


async def measure(transports: Sequence[Transport], args: argparse.Namespace) -> dict[str, Samples]:
    for transport in transports:
        await warm_up(transport, args.warm_up)
    results = {transport.name: Samples() for transport in transports}
    for number in range(1, args.repeats + 1):
        for name, repetition in (await measure_repetition(transports, args)).items():
            samples = results[name]
            samples.p50_us.append(benchlib.percentile(repetition.latencies_us, 50))
            samples.p99_us.append(benchlib.percentile(repetition.latencies_us, 99))
            if repetition.calls:
                samples.calls_per_s.append(repetition.calls / repetition.seconds)
            print(f"  repetition {number}: {_describe(name, samples)}", flush=True)
    return results


def _describe(name: str, samples: Samples) -> str:
    throughput = f", {samples.calls_per_s[-1]:,.0f} calls/s" if samples.calls_per_s else ""
    return f"{name}: p50 {samples.p50_us[-1]:.0f} µs, p99 {samples.p99_us[-1]:.0f} µs{throughput}"


# -- reporting --------------------------------------------------------------------


def ratio(values: Sequence[float], floors: Sequence[float]) -> float | None:
    """The median over the repetitions of value ÷ floor, each pair measured at the same time; None if unmeasured."""
    if not values:
        return None
    return benchlib.median([value / floor for value, floor in zip(values, floors, strict=True)])


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _row(name: str, samples: Samples, floor: Samples) -> list[str]:
    throughput = f"{benchlib.median(samples.calls_per_s):,.0f}" if samples.calls_per_s else "—"
    return [
        name,
        f"{benchlib.median(samples.p50_us):.0f}",
        f"{benchlib.median(samples.p99_us):.0f}",
        throughput,
        _times(ratio(samples.p50_us, floor.p50_us)),
        _times(ratio(samples.calls_per_s, floor.calls_per_s)),
    ]


def table(results: dict[str, Samples], in_flight: int) -> str:
    headers = ["transport", "p50 round trip (µs)", "p99 round trip (µs)", f"calls/s, {in_flight} in flight"]
    rows = [_row(name, samples, results[FLOOR]) for name, samples in results.items()]
    return benchlib.markdown_table([*headers, "p50 ÷ floor", "calls/s ÷ floor"], rows)


def goals(results: dict[str, Samples], in_flight: int) -> list[str]:
    ours, floor, http = results[SCHEDULEZERO], results[FLOOR], results[AIOHTTP]
    p50_ratio = ratio(ours.p50_us, floor.p50_us) or 0.0
    throughput = benchlib.median(ours.calls_per_s)
    http_ratio = ratio(ours.calls_per_s, http.calls_per_s) or 0.0
    return [
        f"- p50 round trip ≤ 2x floor: {p50_ratio:.2f}x — {benchlib.verdict(p50_ratio <= 2)}",
        f"- ≥ 10,000 calls/s with {in_flight} in flight: {throughput:,.0f} — {benchlib.verdict(throughput >= 10_000)}",
        f"- ≥ 2x aiohttp throughput: {http_ratio:.2f}x — {benchlib.verdict(http_ratio >= 2)}",
        "(ratios are medians of the ratios within each repetition)",
    ]


# -- running ----------------------------------------------------------------------


async def run(args: argparse.Namespace, endpoints: dict[str, str]) -> dict[str, Samples]:
    async with (
        schedulezero_transport(endpoints["schedulezero"], args.in_flight) as ours,
        req_rep_transports(endpoints["zmq-rep"], args.in_flight) as floors,
        aiohttp_transport(endpoints["aiohttp"], args.in_flight) as http,
    ):
        return await measure([ours, *floors, http], args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=5_000, help="calls per round-trip measurement")
    parser.add_argument("--throughput-calls", type=int, default=32_000, help="calls per throughput measurement")
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight for throughput")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; the table shows their medians")
    parser.add_argument("--blocks", type=int, default=5, help="turns each transport takes within a repetition")
    parser.add_argument("--warm-up", type=int, default=1_000, help="calls before measuring, per transport")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    benchlib.stop_on_sigterm()
    endpoints = {
        "schedulezero": f"tcp://127.0.0.1:{benchlib.free_port()}",
        "zmq-rep": f"tcp://127.0.0.1:{benchlib.free_port()}",
    }
    http_port = benchlib.free_port()
    endpoints["aiohttp"] = f"http://127.0.0.1:{http_port}/echo"
    peers = str(benchlib.BENCH_DIR / "peer_servers.py")
    handler = benchlib.handler_argv(ECHO_HANDLER, endpoints["schedulezero"], benchlib.BENCH_DIR, "--idle-timeout", "0")
    print(benchlib.environment("pyzmq", "msgpack", "aiohttp"))
    print(
        f"payload {PAYLOAD!r:.60}…; {args.round_trips:,} round trips and {args.throughput_calls:,} calls "
        f"with {args.in_flight} in flight per repetition, {args.repeats} repetitions",
        flush=True,
    )
    with (
        benchlib.serving("schedulezero handler", handler),
        benchlib.serving("REP server", [benchlib.PYTHON, peers, "zmq-rep", endpoints["zmq-rep"]]),
        benchlib.serving("aiohttp server", [benchlib.PYTHON, peers, "aiohttp", str(http_port)]),
    ):
        results = asyncio.run(run(args, endpoints))
    print()
    print(table(results, args.in_flight))
    print()
    print("\n".join(goals(results, args.in_flight)))


if __name__ == "__main__":
    main()
