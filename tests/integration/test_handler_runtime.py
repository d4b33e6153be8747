"""The handler runtime over real sockets, against real handler processes."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import yaml
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulezero_handler import client as client_
from schedulezero_handler import errors, protocol, security
from tests.support import processes

PROBE = "tests.support.handlers:ProbeHandler"
CACHE = "examples.handlers.cache_handler:CacheHandler"


async def test_async_and_sync_methods(probe: processes.HandlerProcess, client: client_.Client) -> None:
    assert await client.call(probe.endpoint, "echo", {"value": {"a": [1, 2.5, None, "x"]}}) == {
        "a": [1, 2.5, None, "x"]
    }
    assert await client.call(probe.endpoint, "add", {"a": 2, "b": 40}) == 42
    assert await client.call(probe.endpoint, "thread_name") is True  # sync methods leave the event loop


@pytest.mark.parametrize(
    ("params", "field"),
    [({"a": "two"}, "parameter 'a'"), ({}, "missing required parameter 'a'"), ({"a": 1, "c": 2}, "parameter 'c'")],
)
async def test_invalid_params_name_the_field(
    probe: processes.HandlerProcess, client: client_.Client, params: dict[str, object], field: str
) -> None:
    with pytest.raises(errors.InvalidParams, match=field):
        await client.call(probe.endpoint, "add", params)
    assert await client.call(probe.endpoint, "counts") == {}  # never ran


async def test_unknown_and_unexposed_methods_are_not_found(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    for method in ("nope", "helper", "on_start", "__init__", "sys.reboot"):
        with pytest.raises(errors.MethodNotFound):
            await client.call(probe.endpoint, method)


async def test_method_errors_carry_type_and_message(probe: processes.HandlerProcess, client: client_.Client) -> None:
    with pytest.raises(errors.HandlerError, match="ValueError: disk full"):
        await client.call(probe.endpoint, "fail", {"message": "disk full"})
    with pytest.raises(errors.InvalidResult, match="result is a set"):
        await client.call(probe.endpoint, "bad_result")


async def test_deadline_cancels_async_work(probe: processes.HandlerProcess, client: client_.Client) -> None:
    with pytest.raises(errors.DeadlineExceeded, match="slow did not finish within 300 ms"):
        await client.call(probe.endpoint, "slow", {"seconds": 1.0, "key": "d"}, timeout=0.3)
    await asyncio.sleep(1.2)
    counts = await client.call(probe.endpoint, "counts")
    assert counts.get("slow-start:d") == 1
    assert "slow-done:d" not in counts  # cancelled, not merely abandoned


async def test_same_call_id_over_two_connections_executes_once(probe: processes.HandlerProcess) -> None:
    call_id = protocol.new_call_id()
    params = {"seconds": 0.5, "key": "once"}
    async with (
        client_.Client(context=zmq.asyncio.Context()) as first,
        client_.Client(context=zmq.asyncio.Context()) as second,
    ):
        results = await asyncio.gather(
            first.call(probe.endpoint, "slow", params, call_id=call_id),
            second.call(probe.endpoint, "slow", params, call_id=call_id),  # joins the running call
        )
        results.append(await first.call(probe.endpoint, "slow", params, call_id=call_id))  # a finished duplicate
        assert results == ["once", "once", "once"]
        counts = await second.call(probe.endpoint, "counts")
    assert counts["slow-start:once"] == 1
    assert counts["slow-done:once"] == 1


async def test_a_duplicate_waits_on_its_own_deadline(probe: processes.HandlerProcess, client: client_.Client) -> None:
    """Two callers of one call id on one connection: the first one's wait running out fails it alone."""
    call_id = protocol.new_call_id()
    params = {"seconds": 1.5}  # blocks the handler's loop: no reply at all until it is over
    impatient = asyncio.ensure_future(client.call(probe.endpoint, "block_loop", params, call_id=call_id, timeout=0.1))
    await asyncio.sleep(0.05)
    patient = asyncio.ensure_future(client.call(probe.endpoint, "block_loop", params, call_id=call_id, timeout=5))
    with pytest.raises(errors.DeadlineExceeded, match="no reply from"):
        await impatient
    assert not patient.done()
    assert await patient is None  # the one run's result, answered to the duplicate from the reply cache


async def test_replies_held_while_a_burst_goes_out_all_arrive_once_let_in(tmp_path: pathlib.Path) -> None:
    """A caller that holds its replies while it sends a burst (the engine does) gets every one of them when it
    lets them in, however many arrived meanwhile: none is dropped for want of room in its socket. A call whose
    deadline passed during the hold takes the reply that was waiting for it rather than failing."""
    count = 10_000
    options = ("--max-concurrent-calls", str(count + 1), "--idle-timeout", "0")
    with processes.running_handler(PROBE, tmp_path, *options) as probe:
        async with client_.Client() as holding, client_.Client() as watching:
            await holding.call(probe.endpoint, "sys.health")  # connected before the burst
            holding.hold_replies()
            early = asyncio.ensure_future(holding.call(probe.endpoint, "tick", schedule="ns/early", timeout=0.2))
            calls = [
                asyncio.ensure_future(holding.call(probe.endpoint, "tick", schedule=f"ns/held-{index}", timeout=60))
                for index in range(count)
            ]
            started = asyncio.get_running_loop().time()
            ran = 0
            async with asyncio.timeout(120):
                while ran < count + 1:
                    await asyncio.sleep(0.2)
                    ran = len(await watching.call(probe.endpoint, "ticks_seen"))
            # Every call ran; its reply sits in the socket. Past the early call's deadline (0.2 s + the grace):
            await asyncio.sleep(max(1.0, started + 1.0 - asyncio.get_running_loop().time()))
            assert early.done()
            assert early.exception() is None  # its deadline read the replies that waited
            holding.release_replies()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert not failed, f"{len(failed)} of {count} calls failed, the first: {failed[0]!r}"


async def test_handler_killed_mid_call_fails_the_call_not_the_caller(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    call = asyncio.ensure_future(client.call(probe.endpoint, "slow", {"seconds": 30}, timeout=20))
    await asyncio.sleep(0.5)
    probe.kill()
    async with asyncio.timeout(20):  # within the call's own timeout: never a hang
        with pytest.raises(errors.Unavailable, match=r"connection to .* lost"):
            await call


async def test_restarted_handler_is_reached_again(tmp_path: pathlib.Path, client: client_.Client) -> None:
    port = processes.controlplane.free_port()
    first = processes.start_handler(PROBE, tmp_path, port=port)
    try:
        first_pid = await client.call(first.endpoint, "pid")
    finally:
        first.kill()
    with pytest.raises(errors.CallError):
        await client.call(first.endpoint, "pid", timeout=0.5)
    with processes.running_handler(PROBE, tmp_path, port=port) as second:
        retry = client_.RetryPolicy(max_attempts=20, backoff=0.2, max_backoff=0.5)
        second_pid = await client.call(second.endpoint, "pid", timeout=2, retry=retry)
    assert second_pid != first_pid


async def test_busy_beyond_max_concurrent_calls(tmp_path: pathlib.Path, client: client_.Client) -> None:
    with processes.running_handler(PROBE, tmp_path, "--max-concurrent-calls", "2") as handler:
        running = [
            asyncio.ensure_future(client.call(handler.endpoint, "slow", {"seconds": 1.0, "key": str(i)}))
            for i in range(2)
        ]
        await asyncio.sleep(0.3)
        with pytest.raises(errors.Busy):
            await client.call(handler.endpoint, "echo", {"value": 1})
        assert await client.call(handler.endpoint, "sys.health") is not None  # sys verbs are not limited
        assert await asyncio.gather(*running) == ["0", "1"]
        assert await client.call(handler.endpoint, "echo", {"value": 1}) == 1


GARBAGE = [
    [b"hello"],
    [b"SZ1", b"CALL"],
    [b"SZ0", b"CALL", b"x" * 16, protocol.pack({"method": "echo", "timeout_ms": 1000}), protocol.pack({})],
    [b"SZ1", b"CALL", b"x" * 3, protocol.pack({"method": "echo", "timeout_ms": 1000}), protocol.pack({})],
    [b"SZ1", b"CALL", b"x" * 16, b"\xc1\xc1", b"\xff"],
    [b"SZ1", b"RESULT", b"x" * 16, protocol.pack({}), protocol.pack(1)],
    [b"SZ1", b"CALL", b"x" * 16, protocol.pack({"method": "echo", "timeout_ms": 1000}), b"z" * (2 * 1024 * 1024)],
]


@pytest.fixture(scope="module")
def shared_probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.HandlerProcess]:
    with processes.running_handler(PROBE, tmp_path_factory.mktemp("garbage")) as handler:
        yield handler


def send_raw(endpoint: str, frames: list[bytes]) -> None:
    context = zmq.Context.instance()
    with context.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 1000)
        dealer.connect(endpoint)
        dealer.send_multipart(frames)


async def assert_serving(endpoint: str) -> None:
    async with client_.Client(context=zmq.asyncio.Context()) as fresh:
        assert await fresh.call(endpoint, "echo", {"value": "still here"}, timeout=5) == "still here"


async def test_malformed_messages_leave_the_handler_serving(shared_probe: processes.HandlerProcess) -> None:
    before = (await client_.Client().call(shared_probe.endpoint, "sys.metrics"))["dropped_messages"]
    for frames in GARBAGE:
        send_raw(shared_probe.endpoint, frames)
        await assert_serving(shared_probe.endpoint)
    after = (await client_.Client().call(shared_probe.endpoint, "sys.metrics"))["dropped_messages"]
    assert after > before


async def test_unknown_kind_gets_bad_request(shared_probe: processes.HandlerProcess) -> None:
    context = zmq.asyncio.Context()
    with context.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(shared_probe.endpoint)
        await dealer.send_multipart([b"SZ1", b"PING", b"p" * 16, protocol.pack({}), protocol.pack({})])
        async with asyncio.timeout(5):
            frames = await dealer.recv_multipart()
    kind, call_id, _, body = protocol.split(frames)
    reply = protocol.decode_reply(kind, call_id, body)
    assert call_id == b"p" * 16
    assert isinstance(reply.error, errors.BadRequest)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=7))
def test_random_bytes_leave_the_handler_serving(shared_probe: processes.HandlerProcess, frames: list[bytes]) -> None:
    send_raw(shared_probe.endpoint, frames)
    asyncio.run(assert_serving(shared_probe.endpoint))


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> pathlib.Path:
    for name in ("server", "operator", "stranger"):
        subprocess.run(
            [processes.SCHEDULEZERO, "keys", "generate", name, "--out", str(tmp_path / "keys")],
            check=True,
            capture_output=True,
        )
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "operator.key").write_text((tmp_path / "keys" / "operator.key").read_text())
    return tmp_path


async def test_curve_accepts_only_known_client_keys(keys: pathlib.Path) -> None:
    key_dir = keys / "keys"

    def curve_client(name: str) -> client_.Client:
        curve = client_.security.CurveClient.from_files(
            server_key=key_dir / "server.key", client_key=key_dir / f"{name}.key_secret"
        )
        return client_.Client(client_.ClientSettings(curve=curve), context=zmq.asyncio.Context())

    args = (
        "--curve-secret-key",
        str(key_dir / "server.key_secret"),
        "--curve-authorized-keys",
        str(keys / "authorized"),
    )
    with processes.running_handler(PROBE, keys, *args) as handler:
        async with curve_client("operator") as known:
            assert await known.call(handler.endpoint, "echo", {"value": "secret"}, timeout=5) == "secret"
        async with curve_client("stranger") as stranger:
            with pytest.raises(errors.Unauthorized):
                await stranger.call(handler.endpoint, "echo", {"value": 1}, timeout=5)
        async with client_.Client(context=zmq.asyncio.Context()) as plaintext:
            with pytest.raises((errors.Unavailable, errors.DeadlineExceeded)):
                await plaintext.call(handler.endpoint, "echo", {"value": 1}, timeout=1)

        # A key added to the directory is accepted without a restart, once the directory is re-read.
        (keys / "authorized" / "stranger.key").write_text((key_dir / "stranger.key").read_text())
        async with asyncio.timeout(15):
            while True:
                async with curve_client("stranger") as admitted:
                    try:
                        assert await admitted.call(handler.endpoint, "echo", {"value": 2}, timeout=2) == 2
                        break
                    except errors.Unauthorized:
                        await asyncio.sleep(0.5)


async def wait_for_state(client: client_.Client, endpoint: str, state: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while (await client.call(endpoint, "sys.health"))["state"] != state:  # noqa: ASYNC110  (another process)
            await asyncio.sleep(0.1)


async def test_idle_handler_sleeps_and_a_call_wakes_it(tmp_path: pathlib.Path, client: client_.Client) -> None:
    with processes.running_handler(PROBE, tmp_path, "--idle-timeout", "0.5") as handler:
        await client.call(handler.endpoint, "echo", {"value": 1})
        await wait_for_state(client, handler.endpoint, "sleeping")
        assert (await client.call(handler.endpoint, "sys.metrics"))["state"] == "sleeping"
        assert await client.call(handler.endpoint, "echo", {"value": 2}) == 2
        history = await client.call(handler.endpoint, "history")
        assert history[-3:] == ["sleep", "wake", "echo"]  # on_wake ran before the method
        assert (await client.call(handler.endpoint, "sys.health"))["state"] == "active"


async def test_sleep_returns_the_cache_memory(tmp_path: pathlib.Path, client: client_.Client) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text("cache_entries: 200000\n")
    with processes.running_handler(CACHE, tmp_path, "--config", str(config), "--idle-timeout", "0") as handler:
        active = (await client.call(handler.endpoint, "sys.metrics"))["resident_memory_bytes"]
        assert await client.call(handler.endpoint, "sys.sleep", timeout=30) == {"state": "sleeping"}
        sleeping = (await client.call(handler.endpoint, "sys.metrics"))["resident_memory_bytes"]
        assert sleeping < 0.5 * active, (active, sleeping)
        assert await client.call(handler.endpoint, "size", timeout=30) == 200_000  # woke and rebuilt


async def test_sigterm_drains_in_flight_calls(tmp_path: pathlib.Path, client: client_.Client) -> None:
    with processes.running_handler(PROBE, tmp_path, "--drain-timeout", "10") as handler:
        in_flight = asyncio.ensure_future(client.call(handler.endpoint, "slow", {"seconds": 1.0, "key": "drain"}))
        await asyncio.sleep(0.3)
        handler.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        # Answered at once, not dropped: a caller can retry elsewhere rather than wait out its deadline.
        with pytest.raises(errors.Unavailable, match="shutting down"):
            await client.call(handler.endpoint, "echo", {"value": 1}, timeout=1)
        assert await in_flight == "drain"
        assert await asyncio.to_thread(handler.popen.wait, 10) == 0


async def test_a_drain_delay_fails_readiness_first_and_still_serves_until_it_ends(
    tmp_path: pathlib.Path, client: client_.Client
) -> None:
    """Behind a Service, callers stop sending once the endpoint turns not-ready, a moment after SIGTERM:
    calls in that moment still run, and are refused only once the delay is over."""
    port = processes.controlplane.free_port()
    args = ("--http-port", str(port), "--drain-delay", "1.5", "--drain-timeout", "5")
    with processes.running_handler(PROBE, tmp_path, *args) as handler:

        def ready() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return error.code

        assert await asyncio.to_thread(ready) == 200
        handler.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(ready) == 503
        assert await client.call(handler.endpoint, "echo", {"value": "during the delay"}, timeout=2) == (
            "during the delay"
        )
        started_late = asyncio.ensure_future(client.call(handler.endpoint, "slow", {"seconds": 2.0, "key": "late"}))
        await asyncio.sleep(1.5)  # the delay is over: draining
        with pytest.raises(errors.Unavailable, match="shutting down"):
            await client.call(handler.endpoint, "echo", {"value": 1}, timeout=1)
        assert await started_late == "late"  # taken during the delay, so drained, not dropped
        assert await asyncio.to_thread(handler.popen.wait, 10) == 0


async def test_health_endpoints_follow_the_event_loop(tmp_path: pathlib.Path, client: client_.Client) -> None:
    port = processes.controlplane.free_port()
    with processes.running_handler(PROBE, tmp_path, "--http-port", str(port)) as handler:

        def get(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return error.code

        assert await asyncio.to_thread(get, "/readyz") == 200
        assert await asyncio.to_thread(get, "/healthz") == 200
        blocked = asyncio.ensure_future(client.call(handler.endpoint, "block_loop", {"seconds": 3}))
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(get, "/healthz") == 503  # the loop is stuck
        await blocked
        assert await asyncio.to_thread(get, "/healthz") == 200
        assert await asyncio.to_thread(get, "/nope") == 404


def test_call_command_prints_json_or_the_error(probe: processes.HandlerProcess) -> None:
    ok = subprocess.run(
        [processes.SCHEDULEZERO, "call", probe.endpoint, "echo", "--params", '{"value": {"n": 1}}'],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0
    assert json.loads(ok.stdout) == {"n": 1}
    failed = subprocess.run(
        [processes.SCHEDULEZERO, "call", probe.endpoint, "add", "--params", '{"a": "x"}'],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("InvalidParams: parameter 'a'")
    raised = subprocess.run(
        [processes.SCHEDULEZERO, "call", probe.endpoint, "fail", "--params", '{"message": "disk full"}'],
        capture_output=True,
        text=True,
    )
    assert raised.returncode == 1
    assert raised.stderr.startswith("HandlerError: ValueError: disk full")
    assert "(at handlers.py:" in raised.stderr  # where it was raised, in the handler's code
    assert "schedulezero_handler/server.py" not in raised.stderr


def test_keys_generate_writes_files_and_a_secret(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [processes.SCHEDULEZERO, "keys", "generate", "operator", "--out", str(tmp_path), "--namespace", "ops"],
        capture_output=True,
        text=True,
        check=True,
    )
    public = security.load_public(tmp_path / "operator.key")
    assert public.decode() in done.stdout
    assert security.load_pair(tmp_path / "operator.key_secret")[0] == public
    assert (tmp_path / "operator.key_secret").stat().st_mode & 0o077 == 0
    secret = yaml.safe_load((tmp_path / "operator-secret.yaml").read_text())
    assert secret["kind"] == "Secret"
    assert secret["metadata"] == {
        "name": "operator",
        "namespace": "ops",
        "labels": {"app.kubernetes.io/part-of": "schedulezero"},
    }
    assert set(secret["stringData"]) == {"operator.key", "operator.key_secret"}


def test_handler_command_reports_what_cannot_be_loaded(tmp_path: pathlib.Path) -> None:
    for target, message in [
        ("no_such_module:Thing", "cannot import 'no_such_module'"),
        ("tests.support.handlers:Missing", "has no attribute 'Missing'"),
        ("tests.support.processes:HandlerProcess", "is not a subclass of schedulezero_handler.Handler"),
        ("unregistered-name", "no handler named 'unregistered-name'"),
    ]:
        done = subprocess.run(
            [processes.SCHEDULEZERO, "handler", target, "--app-dir", str(processes.controlplane.REPO)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2
        assert message in done.stderr


async def test_a_retry_runs_again_but_a_resend_gets_the_stored_reply(
    probe: processes.HandlerProcess, client: client_.Client
) -> None:
    call_id = protocol.new_call_id()

    def attempt(n: int) -> protocol.Call:
        return protocol.Call(
            call_id=call_id, method="flaky", params={"key": "r", "failures": 1}, timeout_ms=5000, attempt=n
        )

    with pytest.raises(errors.HandlerError, match="failure 1 of 1"):
        await client.attempt(probe.endpoint, attempt(1))
    with pytest.raises(errors.HandlerError, match="failure 1 of 1"):  # the same attempt again: stored, not re-run
        await client.attempt(probe.endpoint, attempt(1))
    assert await client.attempt(probe.endpoint, attempt(2)) == 2  # the next attempt runs again
    assert await client.attempt(probe.endpoint, attempt(3)) == 2  # after success, every duplicate is answered


async def test_methods_see_the_call_they_serve(probe: processes.HandlerProcess, client: client_.Client) -> None:
    call_id = protocol.new_call_id()
    scheduled = await client.call(
        probe.endpoint, "tick", call_id=call_id, schedule="ns/s", scheduled_time="2026-11-28T06:00:00.000Z"
    )
    assert scheduled == "2026-11-28T06:00:00.000Z"
    seen = await client.call(probe.endpoint, "ticks_seen")
    assert [{name: value for name, value in tick.items() if name != "at"} for tick in seen] == [
        {"run": call_id.hex(), "scheduled": "2026-11-28T06:00:00.000Z", "attempt": 1, "schedule": "ns/s"}
    ]
    other = protocol.new_call_id()
    assert await client.call(probe.endpoint, "sync_call_info", call_id=other) == other.hex()  # in a worker thread too
