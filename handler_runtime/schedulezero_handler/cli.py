"""The ``schedulezero`` command.

Subcommands come from the ``schedulezero.commands`` entry-point group: each
entry is a callable that adds its parsers to the subparsers it is given. The
operator and the conductor register theirs from their own packages, so this
module, part of the light handler runtime, never imports them, and a command
whose extra is not installed is simply absent from ``--help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TypeAlias

import schedulezero_handler

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Register: TypeAlias = Callable[[Subparsers], None]
"""Adds subcommand parsers; each parser sets ``func(args) -> int`` as its default."""

COMMANDS_GROUP = "schedulezero.commands"


class _DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help, unless its help says it already or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: its --help shows the defaults."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(**kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schedulezero",
        description="Scheduled calls into long-running handler services over ZeroMQ.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {schedulezero_handler.__version__}")
    subparsers: Subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for entry_point in sorted(metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            register: Register = entry_point.load()
        except ImportError:  # its extra (operator, conductor) is not installed
            continue
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
