"""The conductor: a handler that scrapes every other handler for Prometheus.

Installed with ``schedulezero[conductor]``; it builds on the handler runtime.
"""
