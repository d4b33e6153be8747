"""A small handler: async and sync methods, configuration, and a method that fails on purpose.

Run it with::

    schedulezero handler example_handler:ExampleHandler --app-dir examples/handlers --bind tcp://127.0.0.1:5555
    schedulezero call tcp://127.0.0.1:5555 greet --params '{"name": "Ada"}'
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
from typing import Literal

from schedulezero_handler import Handler, expose


class ExampleHandler(Handler):
    version = "1.0.0"

    async def on_start(self) -> None:
        self.greeting = str(self.config.get("greeting", "Hello"))
        self.failures: collections.Counter[str] = collections.Counter()

    @expose
    async def greet(self, name: str, excited: bool = False) -> str:
        """Greets someone; async methods run on the event loop."""
        return f"{self.greeting}, {name}{'!' if excited else '.'}"

    @expose
    def checksum(self, text: str, algorithm: Literal["sha256", "md5"] = "sha256") -> str:
        """Hashes text; sync methods run in a worker thread and never block the loop."""
        return hashlib.new(algorithm, text.encode()).hexdigest()

    @expose
    async def report(self, region: str, rows: int = 100) -> dict[str, object]:
        """Pretends to build a report for a while, then returns a summary."""
        await asyncio.sleep(random.uniform(0.01, 0.05))
        return {"region": region, "rows": rows, "total": round(random.uniform(1000, 9000), 2)}

    @expose
    async def flaky(self, key: str, failures: int = 2) -> str:
        """Fails the first ``failures`` calls for ``key``, then succeeds: shows retries."""
        if self.failures[key] < failures:
            self.failures[key] += 1
            raise RuntimeError(f"transient failure {self.failures[key]} of {failures} for {key!r}")
        self.failures[key] = 0
        return f"{key} done"

    def helper(self) -> str:
        """Public but not exposed: not callable over the wire."""
        return "internal"
