"""The operator package's subcommands: ``run --local`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from typing import cast

from schedulezero_handler.cli import Subparsers
from schedulezero_operator import budget as budget_
from schedulezero_operator import demo, election, local
from schedulezero_operator import engine as engine_
from schedulezero_operator.metrics import OperatorMetrics

DEFAULT_METRICS_PORT = 9464


def register(subparsers: Subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="run Schedules from a directory of YAML (local mode)",
        description="Run the scheduling engine on the Schedule and Handler YAML of a directory, without a cluster.",
    )
    run.add_argument("--local", type=pathlib.Path, required=True, metavar="DIR", help="directory of YAML files")
    run.add_argument(
        "--state",
        type=pathlib.Path,
        help="state file (default: one per DIR, under $XDG_STATE_HOME, else ~/.local/state, in schedulezero/local/)",
    )
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
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=engine_.EngineSettings.stop_grace,
        help="seconds runs in flight may finish on Ctrl-C or SIGTERM; later ones run again on restart",
    )
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _serve(mode: local.LocalMode, metrics: OperatorMetrics, metrics_port: int, *, keeps_state: bool = True) -> int:
    if metrics_port:
        try:
            metrics.serve(port=metrics_port)
        except OSError as error:
            print(f"schedulezero: cannot serve /metrics on port {metrics_port}: {error.strerror}", file=sys.stderr)
            return 2
        mode.terminal.say(f"metrics at http://127.0.0.1:{metrics_port}/metrics")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await mode.run(stop)

    asyncio.run(main())
    if keeps_state:
        mode.terminal.say("stopped; status saved in " + str(mode.state.path))
    else:
        mode.terminal.say("stopped; the demo keeps no status, so the next one starts afresh")
    return 0


def _local_mode(directory: pathlib.Path, state: pathlib.Path | None, args: argparse.Namespace) -> local.LocalMode:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = engine_.EngineSettings(status_interval=args.status_interval, stop_grace=args.stop_grace)
    return local.LocalMode(directory, state_path=state, settings=settings)


def _run_local(args: argparse.Namespace) -> int:
    if not args.local.is_dir():
        print(f"schedulezero: {args.local} is not a directory", file=sys.stderr)
        return 2
    mode = _local_mode(args.local, args.state, args)
    mode.terminal.say(f"running Schedules from {args.local} (Ctrl-C to stop)")
    return _serve(mode, mode.engine.metrics, args.metrics_port)


DEMO_HANDLER = "tcp://127.0.0.1:5555"
DEMO_CONDUCTOR = "tcp://127.0.0.1:5556"
DEMO_CONDUCTOR_METRICS = 9465


def _run_demo(args: argparse.Namespace) -> int:
    for path in (args.dir, args.handlers):
        if not path.is_dir():
            print(f"schedulezero: {path} not found; run the demo from the repository root", file=sys.stderr)
            return 2
    for port in (5555, 5556, DEMO_CONDUCTOR_METRICS):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                print(f"schedulezero: port {port}, used by the demo, is taken", file=sys.stderr)
                return 2
    with tempfile.TemporaryDirectory(prefix="schedulezero-demo-") as state_dir:
        conductor_config = pathlib.Path(state_dir) / "conductor.yaml"
        conductor_config.write_text(
            f"scrape_interval: 5\nhandlers:\n  - {{name: default/example, endpoint: '{DEMO_HANDLER}'}}\n"
        )
        quiet = ["--log-level", "WARNING"]
        logs = demo.log_directory()
        mode = _local_mode(args.dir, pathlib.Path(state_dir) / "state.json", args)
        say = mode.terminal.say
        commands = {
            "handler": [
                sys.argv[0], "handler", "example_handler:ExampleHandler", "--bind", DEMO_HANDLER,
                "--app-dir", str(args.handlers), "--idle-timeout", "20", *quiet,
            ],
            "conductor": [
                sys.argv[0], "conductor", "--bind", DEMO_CONDUCTOR, "--config", str(conductor_config),
                "--metrics-port", str(DEMO_CONDUCTOR_METRICS), *quiet,
            ],
        }  # fmt: skip
        children = []
        for name, command in commands.items():
            output = demo.ChildOutput(name, demo.fresh_log(logs, name), say)
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert child.stdout is not None
            children.append((child, output.pump(child.stdout)))
        try:
            say(f"demo: example handler on {DEMO_HANDLER}, conductor on {DEMO_CONDUCTOR}, Schedules from {args.dir}")
            say(f"handler metrics (from the conductor) at http://127.0.0.1:{DEMO_CONDUCTOR_METRICS}/metrics")
            say(f"their logs, with whole tracebacks, in {logs}")
            say(f"try: {demo.command()} call {DEMO_CONDUCTOR} collect_metrics")
            return _serve(mode, mode.engine.metrics, args.metrics_port, keeps_state=False)
        finally:
            for child, _ in children:
                child.terminate()
            for child, pump in children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(10)
                pump.join(5)


def register_kubernetes(subparsers: Subparsers) -> None:
    operator = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Watch Schedules and Handlers and run the Schedules. Replicas share the Schedules by shard, "
        "each shard a Lease held by one replica at a time.",
    )
    scope = operator.add_mutually_exclusive_group(required=True)
    scope.add_argument("--namespace", "-n", action="append", metavar="NS", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    operator.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="/metrics port (0: none)")
    operator.add_argument(
        "--liveness-port", type=int, default=8080, help="/healthz port for the liveness probe (0: none)"
    )
    operator.add_argument(
        "--per-schedule-histograms",
        action="store_true",
        help="a run-duration histogram per Schedule too (17 series each): for small installations only",
    )
    operator.add_argument("--log-format", choices=["text", "json"], default="text")
    operator.add_argument("--verbose", action="store_true", help="debug logging")
    operator.add_argument(
        "--status-interval", type=float, default=2.0, help="seconds between status writes per Schedule"
    )
    operator.add_argument("--probe-interval", type=float, default=30.0, help="seconds between probes of each Handler")
    operator.add_argument("--event-interval", type=float, default=60.0, help="seconds between like Events per object")
    operator.add_argument(
        "--watch-timeout",
        type=int,
        default=300,
        help="seconds a watch lasts before it is renewed, so a silently dropped connection cannot stall the operator",
    )
    operator.add_argument(
        "--default-security",
        choices=["curve", "plaintext"],
        default="plaintext",
        help="how a Handler with neither spec.security nor spec.curve is called: with CURVE keys the operator "
        "issues, or in clear text (default %(default)s; the Helm chart and manifests set curve)",
    )
    operator.add_argument(
        "--key-check-interval",
        type=float,
        default=30.0,
        help="seconds between re-reads of each Handler's key Secrets (default %(default)s)",
    )
    budget = budget_.BudgetSettings()
    operator.add_argument(
        "--kube-api-qps",
        type=float,
        default=budget.qps,
        help=f"requests per second to the API server, watches aside (default {budget.qps:g})",
    )
    operator.add_argument(
        "--kube-api-burst",
        type=int,
        default=budget.burst,
        help=f"requests that may go at once after a quiet spell (default {budget.burst})",
    )
    _election_arguments(operator)
    operator.set_defaults(func=_run_operator)

    run_now = subparsers.add_parser(
        "run-now",
        help="run a Schedule once, now",
        description="Sets the schedulezero.io/run-now annotation to a new token; the operator runs the Schedule once.",
    )
    run_now.add_argument("name", help="Schedule name")
    run_now.add_argument("--namespace", "-n", default=None, help="namespace (default: the kubeconfig's)")
    run_now.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")
    run_now.set_defaults(func=_run_now)


def _election_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = election.ElectionSettings()
    group = parser.add_argument_group("high availability (client-go's leader election, per shard)")
    group.add_argument("--shards", type=int, default=defaults.shards, help="Leases the Schedules are split across")
    group.add_argument("--lease-duration", type=float, default=defaults.lease_duration, help="seconds (default 15)")
    group.add_argument("--renew-deadline", type=float, default=defaults.renew_deadline, help="seconds (default 10)")
    group.add_argument("--retry-period", type=float, default=defaults.retry_period, help="seconds (default 2)")
    group.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "schedulezero-system"),
        help="namespace of the Leases and checkpoints (default: POD_NAMESPACE, else schedulezero-system)",
    )
    group.add_argument("--lease-prefix", default=defaults.prefix, help="name prefix of the Leases and checkpoints")
    group.add_argument(
        "--identity",
        default=f"{os.environ.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}".lower(),
        help="this replica's name in the Leases (default: POD_NAME or the host name, and a random suffix)",
    )


TEXT_LOG_FORMAT = "[%(asctime)s] %(name)s [%(levelname)-8s] %(message)s"
"""kopf's full format, with whole logger names."""


def unbindable(port: int, address: str = "0.0.0.0") -> str | None:
    """Why a TCP server could not listen on ``port``, or None when it could.

    The operator's ports are bound inside kopf's start-up (``/metrics`` by a
    startup handler kopf retries every minute, ``/healthz`` by kopf itself), where
    a taken port is a traceback and a retry rather than an exit. Binding each
    once first, as the servers will (with SO_REUSEADDR), turns it into one line
    and exit code 2, as the handler and the conductor have it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
            probe.listen()
        except OSError as error:
            return error.strerror or str(error)
    return None


def _run_operator(args: argparse.Namespace) -> int:
    for what, port in (("/metrics", args.metrics_port), ("/healthz", args.liveness_port)):
        if port and (why := unbindable(port)) is not None:
            print(f"schedulezero: cannot serve {what} on port {port}: {why}", file=sys.stderr)
            return 2

    import kopf

    from schedulezero_operator import controller

    # kopf's own text format cuts logger names to 20 characters ("schedulezero_operato"); a format string is
    # taken as it is (kopf matches on str), though kopf types the parameter as its enum only.
    log_format = kopf.LogFormat.JSON if args.log_format == "json" else cast(kopf.LogFormat, TEXT_LOG_FORMAT)
    kopf.configure(verbose=args.verbose, log_format=log_format)
    config = controller.ControllerSettings(
        status_interval=args.status_interval,
        probe_interval=args.probe_interval,
        event_interval=args.event_interval,
        watch_timeout=args.watch_timeout,
        metrics_port=args.metrics_port or None,
        per_schedule_histograms=args.per_schedule_histograms,
        identity=args.identity,
        lease_namespace=args.lease_namespace,
        namespaces=() if args.all_namespaces else tuple(args.namespace),
        default_security=args.default_security,
        key_check_interval=args.key_check_interval,
    )
    try:
        config = dataclasses.replace(
            config,
            budget=budget_.BudgetSettings(qps=args.kube_api_qps, burst=args.kube_api_burst),
            ha=election.ElectionSettings(
                shards=args.shards,
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
                prefix=args.lease_prefix,
            ),
        )
    except ValueError as error:
        print(f"schedulezero: {error}", file=sys.stderr)
        return 2
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    asyncio.run(
        kopf.operator(
            registry=controller.build_registry(config),
            clusterwide=args.all_namespaces,
            namespaces=args.namespace or (),
            standalone=True,
            liveness_endpoint=liveness,
        )
    )
    return 0


def _run_now(args: argparse.Namespace) -> int:
    from kubernetes_asyncio.client.exceptions import ApiException

    from schedulezero_operator import kubeapi

    namespace = args.namespace or kubeapi.default_namespace(args.kubeconfig)

    async def request() -> str:
        api_client = await kubeapi.connect(args.kubeconfig)
        api = kubeapi.Api(api_client)
        try:
            return await api.request_run(namespace, args.name)
        finally:
            await api.close()

    try:
        token = asyncio.run(request())
    except ApiException as error:
        reason = "not found" if error.status == 404 else f"{error.status} {error.reason}"
        print(f"schedulezero: Schedule {namespace}/{args.name}: {reason}", file=sys.stderr)
        return 1
    print(f"schedule.schedulezero.io/{args.name} in {namespace}: run requested (token {token})")
    return 0
