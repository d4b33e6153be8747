"""The handler ``bench_engine.py`` serves: records how late each scheduled call starts.

``tick`` takes the wall clock first thing and keeps ``now - scheduled_time``
(the run's nominal time, sent by the engine with every scheduled call), so the
lateness covers everything between the nominal time and the method's start:
the engine's timer, its decision, the call on the wire and the handler's
dispatch. Engine and handler run on the same machine, hence the same clock.
"""

from __future__ import annotations

import datetime
import time

from schedulezero_handler import Handler, current_call, expose


class LatenessHandler(Handler):
    version = "1.0.0"

    async def on_start(self) -> None:
        self.lateness: list[float] = []

    @expose
    async def tick(self) -> None:
        """Records the lateness of this call's start in seconds (nothing for a call without a nominal time)."""
        now = time.time()
        call = current_call()
        if call is None or call.scheduled_time is None:
            return
        self.lateness.append(now - datetime.datetime.fromisoformat(call.scheduled_time).timestamp())

    @expose
    async def take_samples(self) -> list[float]:
        """The lateness samples recorded since the last call, in seconds; starts a new series."""
        samples, self.lateness = self.lateness, []
        return samples
