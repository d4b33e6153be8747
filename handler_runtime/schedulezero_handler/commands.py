"""The handler runtime's subcommands: ``handler``, ``call`` and ``keys``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys
from typing import Any

import yaml
import zmq.auth

from schedulezero_handler import client as client_
from schedulezero_handler import errors, runner, security
from schedulezero_handler import server as server_
from schedulezero_handler.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    _register_handler(subparsers)
    _register_call(subparsers)
    _register_keys(subparsers)


def _register_handler(subparsers: Subparsers) -> None:
    defaults = server_.ServerSettings()
    parser = subparsers.add_parser("handler", help="serve a handler", description="Serve a handler over ZeroMQ.")
    parser.add_argument("handler", help="module:Class, or a name registered in the schedulezero.handlers group")
    parser.add_argument("--bind", default=defaults.bind, help="ZeroMQ endpoint (default %(default)s)")
    parser.add_argument("--config", type=pathlib.Path, help="YAML file passed to the handler as self.config")
    parser.add_argument(
        "--app-dir",
        type=pathlib.Path,
        default=pathlib.Path("."),
        help="where module:Class is imported from (default .)",
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=defaults.idle_timeout, help="seconds before sleeping; 0 never"
    )
    parser.add_argument("--max-concurrent-calls", type=int, default=defaults.max_concurrent_calls)
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout, help="grace on SIGTERM")
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=defaults.drain_delay,
        help="seconds calls are still taken on SIGTERM while /readyz fails, before draining (default %(default)s)",
    )
    parser.add_argument(
        "--reply-cache-bytes",
        type=int,
        default=defaults.reply_cache_bytes,
        help="bytes of finished replies kept for resends and retries (default %(default)s)",
    )
    parser.add_argument(
        "--reply-cache-size",
        type=int,
        default=defaults.reply_cache_size,
        help="finished replies kept for resends and retries; 0 keeps none (default %(default)s)",
    )
    parser.add_argument(
        "--journal",
        type=pathlib.Path,
        help="append every method call's delivery (call id, attempt, sender, answer) to this file, as JSON lines",
    )
    parser.add_argument("--http-port", type=int, help="serve /healthz and /readyz on this port")
    parser.add_argument("--curve-secret-key", type=pathlib.Path, help="the handler's .key_secret file")
    parser.add_argument("--curve-authorized-keys", type=pathlib.Path, help="directory of accepted client .key files")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=_run_handler)


def _run_handler(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.reply_cache_size < 0:
        return _fail(f"--reply-cache-size must be 0 or more, not {args.reply_cache_size}")
    if (args.curve_secret_key is None) != (args.curve_authorized_keys is None):
        return _fail("--curve-secret-key and --curve-authorized-keys go together")
    curve = None
    if args.curve_secret_key is not None:
        curve = security.CurveServer(secret_key_file=args.curve_secret_key, authorized_keys=args.curve_authorized_keys)
    sys.path.insert(0, str(args.app_dir.resolve()))
    try:
        cls = runner.load_class(args.handler)
        handler = cls(config=runner.load_config(args.config))
    except runner.HandlerLoadError as error:
        return _fail(str(error))
    settings = server_.ServerSettings(
        bind=args.bind,
        idle_timeout=args.idle_timeout,
        max_concurrent_calls=args.max_concurrent_calls,
        drain_timeout=args.drain_timeout,
        drain_delay=args.drain_delay,
        reply_cache_bytes=args.reply_cache_bytes,
        reply_cache_size=args.reply_cache_size,
        journal=args.journal,
        http_port=args.http_port,
        curve=curve,
    )
    try:
        overrun = asyncio.run(runner.serve(handler, settings))
    except runner.ServeError as error:
        return _fail(str(error))
    if overrun:  # threads Python cannot stop: exit without joining them
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0


def _register_call(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "call", help="call a handler method", description="Call a method and print its result."
    )
    parser.add_argument("endpoint", help="tcp://host:port")
    parser.add_argument("method")
    parser.add_argument("--params", default="{}", help="JSON object of keyword arguments")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt (default %(default)s)")
    parser.add_argument("--attempts", type=int, default=1, help="attempts on retryable errors (default %(default)s)")
    parser.add_argument("--curve-server-key", type=pathlib.Path, help="the handler's public .key file")
    parser.add_argument("--curve-client-key", type=pathlib.Path, help="this client's .key_secret file")
    parser.set_defaults(func=_run_call)


def _run_call(args: argparse.Namespace) -> int:
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as error:
        return _fail(f"--params is not JSON: {error}")
    if not isinstance(params, dict):
        return _fail("--params must be a JSON object")
    if (args.curve_server_key is None) != (args.curve_client_key is None):
        return _fail("--curve-server-key and --curve-client-key go together")
    curve = None
    if args.curve_server_key is not None:
        curve = security.CurveClient.from_files(server_key=args.curve_server_key, client_key=args.curve_client_key)
    retry = client_.RetryPolicy(max_attempts=args.attempts, backoff=0.5, max_backoff=5.0)

    async def call() -> Any:
        async with client_.Client(client_.ClientSettings(curve=curve)) as client:
            return await client.call(args.endpoint, args.method, params, timeout=args.timeout, retry=retry)

    try:
        result = asyncio.run(call())
    except errors.CallError as error:
        print(f"{error.type}: {error.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _register_keys(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("keys", help="CurveZMQ key pairs", description="Manage CurveZMQ key pairs.")
    keys = parser.add_subparsers(metavar="ACTION", required=True)
    generate = keys.add_parser(
        "generate",
        help="write a key pair as files and as a Kubernetes Secret manifest",
        description="Writes NAME.key (public), NAME.key_secret (pair) and NAME-secret.yaml into --out.",
    )
    generate.add_argument("name", help="name of the key pair, and of the Secret")
    generate.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."), help="directory (default: current)")
    generate.add_argument("--namespace", help="namespace of the Secret")
    generate.set_defaults(func=_run_keys_generate)


def _run_keys_generate(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = (pathlib.Path(p) for p in zmq.auth.create_certificates(args.out, args.name))
    secret_file.chmod(0o600)
    metadata: dict[str, Any] = {"name": args.name, "labels": {"app.kubernetes.io/part-of": "schedulezero"}}
    if args.namespace:
        metadata["namespace"] = args.namespace
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {public_file.name: public_file.read_text(), secret_file.name: secret_file.read_text()},
    }
    manifest_file = args.out / f"{args.name}-secret.yaml"
    manifest_file.write_text(yaml.safe_dump(manifest, sort_keys=False))
    manifest_file.chmod(0o600)
    print(f"public key {security.load_public(public_file).decode()}")
    print(f"wrote {public_file}, {secret_file} and {manifest_file}")
    return 0


def _fail(message: str) -> int:
    print(f"schedulezero: {message}", file=sys.stderr)
    return 2
