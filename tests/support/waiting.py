"""Waiting for something that happens in another process: a handler, the operator, the API server."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any


def eventually(
    predicate: Callable[[], Any],
    *,
    timeout: float = 40.0,
    interval: float = 0.2,
    ignoring: tuple[type[BaseException], ...] = (),
) -> Any:
    """The first truthy value of ``predicate``, polled until ``timeout``; AssertionError with the last value.

    ``ignoring``: exceptions that mean "not yet" (an object not created yet, a
    status field not written yet) rather than a failure.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        with contextlib.suppress(*ignoring):
            last = predicate()
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s (last value {last!r})")
        time.sleep(interval)
