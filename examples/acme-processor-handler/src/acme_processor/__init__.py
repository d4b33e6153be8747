"""ACME's on-premise data processor, shipped as a ScheduleZero handler."""

__version__ = "1.0.0"
