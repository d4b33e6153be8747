"""Errors the engine reports about the objects it is given."""

from __future__ import annotations


class InvalidSchedule(ValueError):
    """A Schedule that cannot be scheduled; the message names the field and what is wrong with it."""
