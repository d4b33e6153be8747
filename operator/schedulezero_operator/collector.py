"""Holding Python's cyclic garbage collector off while a burst of runs is sent.

A burst allocates a task, a coroutine, a run and a call for every Schedule
due, and they all live until their replies come back. Each allocation counts
towards the collector's thresholds, so a burst sets off collections that scan
every object those runs keep alive, and full ones that scan the whole heap
(every Schedule's state, trigger, timer and metric series): at 10,000
Schedules due at once, they took about half of the time from the instant to
the last call's send. Nothing a burst allocates needs the cyclic collector to
be freed sooner, so it is held off until the burst's calls have gone out, and
then runs as it would have.

The hold is counted, so several engines in one process (tests, local mode)
share it, and a collector that someone else disabled is left disabled.
"""

from __future__ import annotations

import gc

_holds = 0
_resume = False
"""Whether the collector was enabled when the first hold began, hence re-enabled when the last ends."""


def hold() -> None:
    """Holds the collector off until the matching ``release``."""
    global _holds, _resume
    if _holds == 0:
        _resume = gc.isenabled()
        gc.disable()
    _holds += 1


def release() -> None:
    """Ends one ``hold``; the collector runs again once every hold has ended, if it ran before."""
    global _holds
    if _holds == 0:
        return
    _holds -= 1
    if _holds == 0 and _resume:
        gc.enable()


def held() -> bool:
    return _holds > 0
