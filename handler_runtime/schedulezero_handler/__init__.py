"""The handler runtime: what a handler author writes against.

It stays light (pyzmq, msgpack, psutil) so that a handler package does not pull
in the operator's or the conductor's dependencies.
"""

from importlib import metadata

__version__ = metadata.version("schedulezero")

__all__ = ["__version__"]
