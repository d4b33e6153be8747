"""Checking a call's params against the method's signature and type hints.

Params arrive as JSON values, so only JSON-shaped hints can be checked: str,
int, float, bool, None, Any, list[T], dict[str, T], unions, Optional and
Literal. Hints of other types (a dataclass, a TypedDict, a custom class) are not
checked: the method receives the JSON value as it came.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from schedulezero_handler import errors


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    name: str
    hint: Any
    required: bool
    variadic: bool = False
    """``**kwargs``: accepts any further names."""

    def describe(self) -> dict[str, Any]:
        described = {"name": self.name, "type": hint_name(self.hint), "required": self.required}
        if self.variadic:
            described["variadic"] = True
        return described


def hint_name(hint: Any) -> str:
    if hint is inspect.Parameter.empty or hint is Any:
        return "Any"
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def signature_params(func: Callable[..., Any]) -> tuple[Param, ...]:
    """The keyword-callable parameters of ``func`` (a bound method: no ``self``)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an unresolvable annotation must not make the method uncallable
        hints = {}
    params = []
    for parameter in inspect.signature(func).parameters.values():
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise TypeError(f"{func.__qualname__}: parameter {parameter.name!r} cannot be passed by name")
        hint = hints.get(parameter.name, inspect.Parameter.empty)
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            params.append(Param(parameter.name, hint, required=False, variadic=True))
        else:
            params.append(Param(parameter.name, hint, required=parameter.default is inspect.Parameter.empty))
    return tuple(params)


def check(params: dict[str, Any], signature: tuple[Param, ...]) -> None:
    """Raises InvalidParams naming the first field that does not fit."""
    named = {p.name: p for p in signature if not p.variadic}
    variadic = next((p for p in signature if p.variadic), None)
    for required in named.values():
        if required.required and required.name not in params:
            raise errors.InvalidParams(f"missing required parameter {required.name!r}")
    for name, value in params.items():
        param = named.get(name, variadic)
        if param is None:
            accepted = ", ".join(named) or "none"
            raise errors.InvalidParams(f"unexpected parameter {name!r} (accepted: {accepted})")
        problem = mismatch(value, param.hint)
        if problem is not None:
            raise errors.InvalidParams(f"parameter {name!r}: {problem}")


def mismatch(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint``, or None when it does (or cannot be checked)."""
    if hint is inspect.Parameter.empty or hint is Any or hint is object:
        return None
    if hint is None or hint is type(None):
        return None if value is None else f"expected null, got {_json_type(value)}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if any(mismatch(value, arg) is None for arg in args):
            return None
        return f"expected {hint_name(hint)}, got {_json_type(value)}"
    if origin is typing.Literal:
        return None if value in args else f"expected one of {list(args)!r}, got {value!r:.80}"
    if origin in (list, collections.abc.Sequence, tuple):
        if not isinstance(value, list):
            return f"expected a list, got {_json_type(value)}"
        item_hint = args[0] if args and origin is not tuple else Any
        for index, item in enumerate(value):
            problem = mismatch(item, item_hint)
            if problem is not None:
                return f"item {index}: {problem}"
        return None
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return f"expected an object, got {_json_type(value)}"
        value_hint = args[1] if len(args) == 2 else Any
        for key, item in value.items():
            problem = mismatch(item, value_hint)
            if problem is not None:
                return f"key {key!r}: {problem}"
        return None
    return _plain(value, hint)


def _plain(value: Any, hint: Any) -> str | None:
    if hint is bool:
        return None if isinstance(value, bool) else f"expected a boolean, got {_json_type(value)}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {_json_type(value)}"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {_json_type(value)}"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {_json_type(value)}"
    if hint in (list, dict):
        return mismatch(value, hint[Any] if hint is list else dict[str, Any])
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r:.40})"
    if isinstance(value, str):
        return f"a string ({value!r:.40})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
