"""The handler ``bench_calls.py`` serves: one async method that returns its argument."""

from __future__ import annotations

from typing import Any

from schedulezero_handler import Handler, expose


class EchoHandler(Handler):
    version = "1.0.0"

    @expose
    async def echo(self, value: Any) -> Any:
        """Returns ``value`` unchanged."""
        return value
