"""What callers can do to a handler, and what it must survive: oversized messages, overrunning
threads, unbounded replies, made-up method names, other protocol versions, revoked keys."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import pathlib
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
import zmq
import zmq.asyncio

from schedulezero_handler import client as client_
from schedulezero_handler import errors, protocol, server
from tests.support import controlplane, handlers, processes

PROBE = "tests.support.handlers:ProbeHandler"
MiB = 1024 * 1024


async def test_an_oversized_result_fails_its_call_alone(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    """A 17 MB result used to drop the client's shared connection, failing every other Schedule on it."""
    others = [
        asyncio.ensure_future(client.call(probe.endpoint, "slow", {"seconds": 0.5, "key": str(i)})) for i in range(5)
    ]
    await asyncio.sleep(0.1)
    with pytest.raises(errors.MessageTooLarge, match=r"blob returned \d+ bytes, more than the 16777216") as raised:
        await client.call(probe.endpoint, "blob", {"size": 17 * MiB}, retry=client_.RetryPolicy(max_attempts=3))
    assert raised.value.attempts == 1  # not retried: it would be as large again
    assert await asyncio.gather(*others) == [str(i) for i in range(5)]
    assert await client.call(probe.endpoint, "echo", {"value": "still connected"}) == "still connected"


async def test_oversized_params_fail_before_sending(probe: processes.HandlerProcess, client: client_.Client) -> None:
    with pytest.raises(errors.MessageTooLarge, match=r"call to echo is \d+ bytes, more than the 1048576"):
        await client.call(probe.endpoint, "echo", {"value": "x" * (MiB + 1)})
    assert await client.call(probe.endpoint, "echo", {"value": "x" * 1000}) == "x" * 1000


async def test_a_reply_above_the_clients_limit_fails_at_the_receiver(probe: processes.HandlerProcess) -> None:
    """The handler may send more than this client accepts: the receiver names the size, and keeps the connection."""
    settings = client_.ClientSettings(max_message_size=MiB)
    async with client_.Client(settings, context=zmq.asyncio.Context()) as small:
        with pytest.raises(errors.MessageTooLarge, match=r"message of \d+ bytes exceeds the maximum of 1048576"):
            await small.call(probe.endpoint, "blob", {"size": 2 * MiB})
        assert await small.call(probe.endpoint, "echo", {"value": 1}) == 1


async def test_a_handler_answers_a_call_above_its_limit(probe: processes.HandlerProcess) -> None:
    """A client configured for larger calls than this handler takes gets an answer, not a cut connection."""
    settings = client_.ClientSettings(max_call_size=4 * MiB)
    async with client_.Client(settings, context=zmq.asyncio.Context()) as large:
        with pytest.raises(errors.MessageTooLarge, match="exceeds the maximum of 1048576"):
            await large.call(probe.endpoint, "echo", {"value": "x" * (2 * MiB)})
        assert await large.call(probe.endpoint, "echo", {"value": 2}) == 2


async def test_an_overrunning_sync_call_never_runs_twice_at_once(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    """Python cannot stop a thread: retries of a call still running in one join it instead of running beside it."""
    retry = client_.RetryPolicy(max_attempts=4, backoff=0.1, max_backoff=0.1)
    call = asyncio.ensure_future(
        client.call(probe.endpoint, "slow_sync", {"seconds": 2.0, "key": "overrun"}, timeout=0.3, retry=retry)
    )
    await asyncio.sleep(0.6)  # past the first deadline, the thread still sleeping
    health = await client.call(probe.endpoint, "sys.health")
    metrics = await client.call(probe.endpoint, "sys.metrics")
    assert (health["overrun"], metrics["in_flight"]) == (1, 1)
    with contextlib.suppress(errors.DeadlineExceeded):
        await call  # the last attempt may still be waiting when the thread ends, and get its result
    await asyncio.sleep(2.0)
    counts = await client.call(probe.endpoint, "counts")
    assert counts["sync-start:overrun"] == 1
    assert counts["sync-most:overrun"] == 1
    assert (await client.call(probe.endpoint, "sys.health"))["overrun"] == 0
    assert (await client.call(probe.endpoint, "sys.metrics"))["in_flight"] == 0
    # Its late result is the call's reply now: one more attempt gets it without running it again.
    again = await client.call(
        probe.endpoint, "slow_sync", {"seconds": 2.0, "key": "overrun"}, call_id=await _call_id_of(client, probe)
    )
    assert again == 2.0
    assert (await client.call(probe.endpoint, "counts"))["sync-start:overrun"] == 1


async def _call_id_of(client: client_.Client, probe: processes.HandlerProcess) -> bytes:
    """The call id of the overrun call, as the handler's log names it."""
    for line in probe.output().splitlines():
        if "overran its deadline" in line:
            return bytes.fromhex(line.split("(call ")[1][:32])
    raise AssertionError(f"no overrun logged:\n{probe.output()}")


async def test_overrunning_threads_hold_their_slots_and_fail_liveness(
    tmp_path: pathlib.Path, client: client_.Client
) -> None:
    port = controlplane.free_port()
    args = ("--max-concurrent-calls", "2", "--http-port", str(port))
    with processes.running_handler(PROBE, tmp_path, *args) as handler:
        for key in ("a", "b"):
            with pytest.raises(errors.DeadlineExceeded):
                await client.call(handler.endpoint, "slow_sync", {"seconds": 2.5, "key": key}, timeout=0.2)
        with pytest.raises(errors.Busy, match="2 calls in flight"):
            await client.call(handler.endpoint, "add", {"a": 1})
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (503, "not ok\n2 sync calls still running past their deadline\n")
        await asyncio.sleep(2.5)
        assert await client.call(handler.endpoint, "add", {"a": 1, "b": 2}) == 3
        assert await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_the_reply_cache_is_bounded_in_bytes(tmp_path: pathlib.Path, client: client_.Client) -> None:
    """Before the bound, 800 echoes of 1000 KiB took a handler from 97 to 906 MiB, kept after sleeping."""
    with processes.running_handler(PROBE, tmp_path, "--reply-cache-bytes", str(32 * MiB)) as handler:
        before = (await client.call(handler.endpoint, "sys.metrics"))["resident_memory_bytes"]
        for i in range(300):
            await client.call(handler.endpoint, "echo", {"value": f"{i:06d}" + "x" * (1000 * 1024 - 6)})
        after = (await client.call(handler.endpoint, "sys.metrics"))["resident_memory_bytes"]
        assert after - before < 150 * MiB, (before, after)  # 300 MiB of replies passed through


async def test_made_up_method_names_are_counted_under_one_label(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    for i in range(20):
        with pytest.raises(errors.MethodNotFound):
            await client.call(probe.endpoint, f"no_such_method_{i}_" + "y" * 10_000)
    calls = (await client.call(probe.endpoint, "sys.metrics"))["calls"]
    assert calls[server.UNKNOWN_METHOD] == {"MethodNotFound": 20}
    assert not [name for name in calls if name.startswith("no_such_method")]


async def test_another_protocol_version_gets_an_answer(probe: processes.HandlerProcess) -> None:
    """A caller speaking another version is told so at once instead of waiting out its timeout."""
    context = zmq.asyncio.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(probe.endpoint)
    try:
        call = protocol.encode_call(protocol.Call(call_id=b"v" * 16, method="echo", params={}, timeout_ms=1000))
        await dealer.send_multipart([b"SZ2", *call[1:]])
        reply = await asyncio.wait_for(dealer.recv_multipart(), 5)
    finally:
        dealer.close(linger=0)
        context.term()
    kind, call_id, _, body = protocol.split(reply)
    error = protocol.decode_reply(kind, call_id, body).error
    assert call_id == b"v" * 16
    assert isinstance(error, errors.BadRequest)
    assert error.message == "unsupported protocol version b'SZ2'; this side speaks b'SZ1'"


async def test_method_errors_are_one_line_without_paths(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    """Errors end up in status and Events: the type, the first line and the handler's own frame, no paths."""
    with pytest.raises(errors.HandlerError) as raised:
        await client.call(probe.endpoint, "fail", {"message": "disk full\nsecond line\n" + "z" * 5000})
    lines, first = inspect.getsourcelines(handlers.ProbeHandler.fail)
    raised_at = first + next(i for i, line in enumerate(lines) if "raise" in line)
    assert raised.value.message == f"ValueError: disk full (at handlers.py:{raised_at} in fail)"
    log = probe.output()
    assert "Traceback (most recent call last)" in log
    assert "second line" in log  # the whole message and traceback go to the handler's own log


async def test_a_result_json_cannot_carry_is_not_retried(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    with pytest.raises(errors.InvalidResult, match="result is a set") as raised:
        await client.call(probe.endpoint, "bad_result", retry=client_.RetryPolicy(max_attempts=3, backoff=0.01))
    assert raised.value.attempts == 1


async def test_a_revoked_key_stops_working_on_an_open_connection(tmp_path: pathlib.Path) -> None:
    args = processes.curve_handler_args(tmp_path, "operator")
    curve = client_.security.CurveClient.from_files(
        server_key=tmp_path / "server.key", client_key=tmp_path / "operator.key_secret"
    )
    settings = client_.ClientSettings(curve=curve)
    with processes.running_handler(PROBE, tmp_path, *args) as handler:
        async with client_.Client(settings, context=zmq.asyncio.Context()) as operator:
            assert await operator.call(handler.endpoint, "echo", {"value": 1}) == 1
            (tmp_path / "authorized" / "operator.key").unlink()
            refused: errors.Unauthorized | None = None
            async with asyncio.timeout(10):  # the directory is re-read every 2 s
                while refused is None:
                    try:
                        await operator.call(handler.endpoint, "echo", {"value": 2})
                    except errors.Unauthorized as error:
                        refused = error
                    await asyncio.sleep(0.2)
            assert refused.message == "this client's key is no longer authorized"


def test_a_taken_http_port_is_one_clear_line(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [processes.SCHEDULEZERO, "handler", PROBE, "--bind", f"tcp://127.0.0.1:{controlplane.free_port()}",
             "--app-dir", str(controlplane.REPO), "--http-port", str(port)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip() == f"schedulezero: cannot serve /healthz and /readyz on port {port}: Address already in use"
    )
    assert "Traceback" not in done.stdout + done.stderr
