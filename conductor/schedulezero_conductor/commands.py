"""``schedulezero conductor``: serve the conductor handler and its /metrics."""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import resource
import sys

from schedulezero_conductor import conductor, discovery
from schedulezero_handler import runner, security
from schedulezero_handler import server as server_
from schedulezero_handler.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "conductor",
        help="scrape every handler for Prometheus",
        description="Serve the conductor: it scrapes sys.metrics from every handler and serves /metrics.",
    )
    parser.add_argument("--bind", default="tcp://0.0.0.0:5556", help="ZeroMQ endpoint (default %(default)s)")
    parser.add_argument("--config", type=pathlib.Path, help="YAML: handlers (local), scrape_interval, scrape_timeout")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", metavar="NS", help="scrape Handlers in NS (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="scrape Handlers in every namespace")
    parser.add_argument("--metrics-port", type=int, help="/metrics port (default 9465; 0: none)")
    parser.add_argument("--interval", type=float, help="seconds between scrape rounds (default 15)")
    parser.add_argument("--timeout", type=float, help="seconds per handler scrape (default 5)")
    parser.add_argument("--http-port", type=int, help="serve /healthz and /readyz on this port")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--curve-identity",
        metavar="NAMESPACE/SECRET",
        help="the conductor's issued CURVE key pair (client.key_secret); Handlers without spec.security or "
        "spec.curve are then scraped with it and the server key of their Secret NAME-curve, if it exists",
    )
    parser.add_argument("--curve-secret-key", type=pathlib.Path, help="the conductor's own server .key_secret file")
    parser.add_argument(
        "--curve-authorized-keys", type=pathlib.Path, help="directory of client .key files that may call it"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = runner.load_config(args.config)
    except runner.HandlerLoadError as error:
        print(f"schedulezero: {error}", file=sys.stderr)
        return 2
    if args.config is not None:
        config["config_path"] = str(args.config)
    for key, value in (
        ("metrics_port", args.metrics_port),
        ("scrape_interval", args.interval),
        ("scrape_timeout", args.timeout),
    ):
        if value is not None:
            config[key] = value
    if (args.curve_secret_key is None) != (args.curve_authorized_keys is None):
        print("schedulezero: --curve-secret-key and --curve-authorized-keys go together", file=sys.stderr)
        return 2
    identity = None
    if args.curve_identity is not None:
        namespace, slash, secret = args.curve_identity.partition("/")
        if not (slash and namespace and secret):
            print(f"schedulezero: --curve-identity {args.curve_identity!r} is not NAMESPACE/SECRET", file=sys.stderr)
            return 2
        identity = (namespace, secret)
    source: discovery.Discovery | None = None
    if args.namespace or args.all_namespaces:
        source = discovery.KubernetesDiscovery(namespaces=tuple(args.namespace or ()), identity=identity)
    _raise_open_file_limit()
    handler = conductor.Conductor(config=config, source=source)
    curve = None
    if args.curve_secret_key is not None:
        curve = security.CurveServer(secret_key_file=args.curve_secret_key, authorized_keys=args.curve_authorized_keys)
    settings = server_.ServerSettings(bind=args.bind, idle_timeout=0, http_port=args.http_port, curve=curve)
    try:
        asyncio.run(runner.serve(handler, settings))
    except runner.ServeError as error:  # a port taken: one line and exit 2, as the handler has it
        print(f"schedulezero: {error}", file=sys.stderr)
        return 2
    return 0


def _raise_open_file_limit() -> None:
    """One connection per handler: a thousand handlers need more descriptors than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
