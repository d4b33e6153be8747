"""The errors a call can end with, as both sides of the wire see them.

Each type has a fixed name on the wire and a fixed ``retryable`` flag: callers
retry only what may succeed next time. A request the handler judged invalid
(bad frames, an unknown or unexposed method, wrong params, a refused key) will
fail the same way again, so it is never retried.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CallError(Exception):
    """A call that did not return a result."""

    type: ClassVar[str] = "CallError"
    retryable: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = 1
        """Attempts the caller made before giving up (set by the client)."""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        # A message may quote what a caller sent, lone surrogates included, which UTF-8 cannot carry:
        # escaped, so that the error itself can always be sent.
        message = self.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return {"type": self.type, "message": message, "retryable": self.retryable}


class BadRequest(CallError):
    """The message was malformed or of an unknown kind."""

    type = "BadRequest"
    retryable = False


class MethodNotFound(CallError):
    """The handler has no exposed method of that name."""

    type = "MethodNotFound"
    retryable = False


class InvalidParams(CallError):
    """The params do not match the method's signature; the message names the field."""

    type = "InvalidParams"
    retryable = False


class Unauthorized(CallError):
    """The caller's key is not accepted."""

    type = "Unauthorized"
    retryable = False


class MessageTooLarge(CallError):
    """A call or its reply exceeds the size the receiving side accepts; the message gives both sizes.

    Raised where the size is known: by the client before sending a call, by the
    handler instead of sending an oversized result, and by the receiver of a
    message that is too large. The connection is kept: only this call fails.
    """

    type = "MessageTooLarge"
    retryable = False


class InvalidResult(CallError):
    """The method ran and returned a value JSON cannot carry. Not retried: running it again
    would repeat its side effects and return the same kind of value."""

    type = "InvalidResult"
    retryable = False


class DeadlineExceeded(CallError):
    """No reply within the call's deadline; the handler cancels async work when it passes."""

    type = "DeadlineExceeded"


class Busy(CallError):
    """The handler is running as many calls as it allows."""

    type = "Busy"


class Unavailable(CallError):
    """The handler could not be reached, lost the connection, or is shutting down."""

    type = "Unavailable"


class Cancelled(CallError):
    """The call was cancelled (``sys.cancel``, or the handler stopped)."""

    type = "Cancelled"


class HandlerError(CallError):
    """The method raised; the message carries the exception's type, text and last traceback lines."""

    type = "HandlerError"


ERROR_TYPES: dict[str, type[CallError]] = {
    cls.type: cls
    for cls in (
        BadRequest,
        MethodNotFound,
        InvalidParams,
        Unauthorized,
        MessageTooLarge,
        InvalidResult,
        DeadlineExceeded,
        Busy,
        Unavailable,
        Cancelled,
        HandlerError,
    )
}


def from_wire(body: object) -> CallError:
    """The error an ERROR reply carries; an unknown type keeps its name and its retryable flag."""
    if not isinstance(body, dict):
        return BadRequest(f"malformed error reply: {body!r:.200}")
    name = str(body.get("type", "CallError"))
    message = str(body.get("message", ""))
    known = ERROR_TYPES.get(name)
    if known is not None:
        return known(message)
    # An error type newer than this client: keep its name and flag.
    newer: type[CallError] = type(name, (CallError,), {"type": name, "retryable": bool(body.get("retryable", True))})
    return newer(message)
