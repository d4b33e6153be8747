"""The operator: the scheduling engine, its triggers, status, and the kopf wiring.

Installed with ``schedulezero[operator]``; it builds on the handler runtime's
client and never the other way round.
"""
