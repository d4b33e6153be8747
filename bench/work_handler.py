"""The handler ``bench_replicas.py`` serves: a sync method that spends a few milliseconds of CPU."""

from __future__ import annotations

import time

from schedulezero_handler import Handler, expose


class WorkHandler(Handler):
    version = "1.0.0"

    @expose
    def work(self, ms: float = 5.0) -> int:
        """Spins for ``ms`` milliseconds of this thread's CPU time, as a small computation would."""
        until = time.thread_time() + ms / 1000
        spins = 0
        while time.thread_time() < until:
            spins += 1
        return spins
