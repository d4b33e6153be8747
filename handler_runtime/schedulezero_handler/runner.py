"""Running a handler as a process: find its class, read its config, serve until a signal.

A handler is named either ``module:Class`` or by the name a package registers
in the ``schedulezero.handlers`` entry-point group, which is how catalog
packages make ``schedulezero handler acme-processor`` work after a pip install.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pathlib
import signal
from importlib import metadata
from typing import Any

import yaml
import zmq.asyncio

from schedulezero_handler import handler as handler_
from schedulezero_handler import server as server_
from schedulezero_handler import text

HANDLERS_GROUP = "schedulezero.handlers"

log = logging.getLogger(__name__)


class HandlerLoadError(Exception):
    """The handler named on the command line cannot be loaded; the message says why."""


class ServeError(Exception):
    """The handler cannot be served (an address or port taken); the message says which."""


def load_class(name: str) -> type[handler_.Handler]:
    if ":" in name:
        module_name, _, qualname = name.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as error:
            raise HandlerLoadError(f"cannot import {module_name!r}: {error}") from None
        for part in qualname.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise HandlerLoadError(f"{module_name!r} has no attribute {qualname!r}") from None
    else:
        registered = {entry.name: entry for entry in metadata.entry_points(group=HANDLERS_GROUP)}
        if name not in registered:
            known = ", ".join(sorted(registered)) or "none installed"
            raise HandlerLoadError(f"no handler named {name!r} in {HANDLERS_GROUP} ({known}); or give module:Class")
        target = registered[name].load()
    if not (isinstance(target, type) and issubclass(target, handler_.Handler)):
        raise HandlerLoadError(f"{name!r} is not a subclass of schedulezero_handler.Handler")
    return target


def load_config(path: pathlib.Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise HandlerLoadError(f"cannot read config {path}: {error}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise HandlerLoadError(f"config {path} must be a mapping, not {type(config).__name__}")
    return config


async def serve(handler: handler_.Handler, settings: server_.ServerSettings) -> int:
    """Serves until SIGTERM or SIGINT, then drains in-flight calls and stops.

    Returns how many sync calls still run in their threads past their deadline:
    the process must then end without waiting for them, which it cannot stop.
    """
    context = zmq.asyncio.Context()
    server = server_.Server(handler, settings, context=context)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except zmq.ZMQError as error:
        raise ServeError(f"cannot bind {settings.bind}: {error}") from None
    except OSError as error:  # the HTTP server's port
        raise ServeError(f"cannot serve /healthz and /readyz on port {settings.http_port}: {error.strerror}") from None
    methods = text.count(len(server.methods), "method")
    print(f"serving {type(handler).__name__} on {server.endpoint} ({methods})", flush=True)
    await stop.wait()
    log.info("stopping: draining in-flight calls for up to %.0f s", settings.drain_timeout)
    await server.stop()
    # Replies are sent by ZeroMQ's I/O thread: let the last ones out before the process exits.
    await asyncio.to_thread(context.destroy, linger=1000)
    return server.overrun
