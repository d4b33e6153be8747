"""What a handler author writes: a ``Handler`` subclass with ``@expose``d methods.

Only exposed methods are callable, so a helper method that happens to be public
is never reachable from the network. Lifecycle hooks are coroutines because
they typically open or close pools and connections.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from schedulezero_handler import params as params_

F = TypeVar("F", bound=Callable[..., Any])

_EXPOSED = "__schedulezero_exposed__"


def expose(func: F) -> F:
    """Makes a method callable over the wire (sync methods run in a worker thread)."""
    setattr(func, _EXPOSED, True)
    return func


class Handler:
    """Base class of handlers. Subclass it, expose methods, override the hooks you need."""

    version: ClassVar[str] = "0.0.0"
    """Reported by ``sys.health`` and ``sys.describe``, and shown in the Handler's status."""

    def __init__(self, *, config: Mapping[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})
        """The handler's configuration file (``--config``), parsed; empty without one."""

    async def on_start(self) -> None:
        """Before the first call is accepted: open pools, load configuration."""

    async def on_sleep(self) -> None:
        """After ``idle_timeout`` without calls: release what ``on_start`` and calls acquired."""

    async def on_wake(self) -> None:
        """Before the first call after a sleep: restore what ``on_sleep`` released."""

    async def on_stop(self) -> None:
        """After in-flight calls drained at shutdown."""


@dataclasses.dataclass(frozen=True, slots=True)
class Method:
    """An exposed method bound to its handler instance."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    params: tuple[params_.Param, ...]
    doc: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "doc": self.doc,
            "async": self.is_async,
            "params": [p.describe() for p in self.params if not p.variadic],
        }


def exposed_methods(handler: Handler) -> dict[str, Method]:
    """The handler's exposed methods by name, read once when the server starts."""
    methods = {}
    for name in dir(type(handler)):
        attribute = inspect.getattr_static(type(handler), name)
        func = attribute.__func__ if isinstance(attribute, staticmethod | classmethod) else attribute
        if not getattr(func, _EXPOSED, False):
            continue
        bound = getattr(handler, name)
        methods[name] = Method(
            name=name,
            func=bound,
            is_async=inspect.iscoroutinefunction(bound),
            params=params_.signature_params(bound),
            doc=inspect.getdoc(bound) or "",
        )
    return methods
