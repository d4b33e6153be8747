"""The operator package's subcommands: ``run --local`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile

from schedulezero_handler.cli import Subparsers
from schedulezero_operator import engine as engine_
from schedulezero_operator import local
from schedulezero_operator.metrics import OperatorMetrics

DEFAULT_METRICS_PORT = 9464


def register(subparsers: Subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="run Schedules from a directory of YAML (local mode)",
        description="Run the scheduling engine on the Schedule and Handler YAML of a directory, without a cluster.",
    )
    run.add_argument("--local", type=pathlib.Path, required=True, metavar="DIR", help="directory of YAML files")
    run.add_argument("--state", type=pathlib.Path, help=f"state file (default DIR/{local.STATE_FILE})")
    _common(run)
    run.set_defaults(func=_run_local)

    demo = subparsers.add_parser(
        "demo",
        help="run the example handler and the demo Schedules",
        description="Start the example handler and run the engine on examples/demo/ until Ctrl-C.",
    )
    demo.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("examples/demo"), help="demo Schedules")
    demo.add_argument(
        "--handlers", type=pathlib.Path, default=pathlib.Path("examples/handlers"), help="example handler modules"
    )
    _common(demo)
    demo.set_defaults(func=_run_demo)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="/metrics port (0: none)")
    parser.add_argument("--status-interval", type=float, default=2.0, help="seconds between status writes per Schedule")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _serve(mode: local.LocalMode, metrics: OperatorMetrics, metrics_port: int) -> int:
    if metrics_port:
        try:
            metrics.serve(port=metrics_port)
        except OSError as error:
            print(f"schedulezero: cannot serve /metrics on port {metrics_port}: {error}", file=sys.stderr)
            return 2
        mode.terminal.say(f"metrics at http://127.0.0.1:{metrics_port}/metrics")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await mode.run(stop)

    asyncio.run(main())
    mode.terminal.say("stopped; status saved in " + str(mode.state.path))
    return 0


def _local_mode(directory: pathlib.Path, state: pathlib.Path | None, args: argparse.Namespace) -> local.LocalMode:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = engine_.EngineSettings(status_interval=args.status_interval)
    return local.LocalMode(directory, state_path=state, settings=settings)


def _run_local(args: argparse.Namespace) -> int:
    if not args.local.is_dir():
        print(f"schedulezero: {args.local} is not a directory", file=sys.stderr)
        return 2
    mode = _local_mode(args.local, args.state, args)
    mode.terminal.say(f"running Schedules from {args.local} (Ctrl-C to stop)")
    return _serve(mode, mode.engine.metrics, args.metrics_port)


def _run_demo(args: argparse.Namespace) -> int:
    for path in (args.dir, args.handlers):
        if not path.is_dir():
            print(f"schedulezero: {path} not found; run the demo from the repository root", file=sys.stderr)
            return 2
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5555)) == 0:
            print("schedulezero: port 5555, used by the demo handler, is taken", file=sys.stderr)
            return 2
    handler = subprocess.Popen(
        [
            sys.argv[0],
            "handler",
            "example_handler:ExampleHandler",
            "--bind",
            "tcp://127.0.0.1:5555",
            "--app-dir",
            str(args.handlers),
            "--idle-timeout",
            "20",
            "--log-level",
            "WARNING",
        ],
    )
    try:
        with tempfile.TemporaryDirectory(prefix="schedulezero-demo-") as state_dir:
            mode = _local_mode(args.dir, pathlib.Path(state_dir) / "state.json", args)
            mode.terminal.say(
                f"demo: example handler on tcp://127.0.0.1:5555 (pid {handler.pid}), Schedules from {args.dir}"
            )
            mode.terminal.say("try: schedulezero call tcp://127.0.0.1:5555 sys.metrics")
            return _serve(mode, mode.engine.metrics, args.metrics_port)
    finally:
        handler.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            handler.wait(10)
