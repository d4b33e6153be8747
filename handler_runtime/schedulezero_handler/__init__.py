"""The handler runtime: what a handler author writes against.

It stays light (pyzmq, msgpack, psutil, PyYAML) so that a handler package does
not pull in the operator's or the conductor's dependencies::

    from schedulezero_handler import Handler, expose

    class Reports(Handler):
        @expose
        async def build(self, region: str) -> dict[str, int]: ...
"""

from importlib import metadata

from schedulezero_handler.client import Client, ClientSettings, RetryPolicy
from schedulezero_handler.context import CallInfo, current_call
from schedulezero_handler.errors import CallError
from schedulezero_handler.handler import Handler, expose

__version__ = metadata.version("schedulezero")

__all__ = [
    "CallError",
    "CallInfo",
    "Client",
    "ClientSettings",
    "Handler",
    "RetryPolicy",
    "__version__",
    "current_call",
    "expose",
]
