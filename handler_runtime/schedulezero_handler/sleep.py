"""Returning memory to the operating system when a handler goes to sleep.

Dropping references is not enough: CPython keeps freed objects in its arenas
and glibc keeps freed heap pages, so the resident size barely moves. A full
garbage collection frees cycles, and ``malloc_trim(0)`` hands glibc's free
pages back to the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None
    return trim


def release_memory() -> bool:
    """Collects garbage and trims the C heap; False where the C library cannot trim."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
