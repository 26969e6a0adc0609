"""The command-line scaffold of `python -m model_training` and `python -m service`.

Each subcommand lives in its own module with `register(subparsers)`, which adds its parser and sets
`handler(args) -> int`. `run` parses, calls the handler, and turns a KdoctError (bad input, bad data,
bad settings) or an OSError (an unwritable path, a full disk) into one line `error: ...` on stderr and
exit code 2; with -v the traceback is shown instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from kdoct.errors import KdoctError

__all__ = ["EXIT_BAD_INPUT", "build_parser", "run"]

EXIT_BAD_INPUT = 2


def build_parser(prog: str, description: str, command_modules: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in command_modules:
        importlib.import_module(module_name).register(subparsers)
    return parser


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    before: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Parse ``argv`` and run its handler; ``before`` runs first (e.g. to set up logging)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): already printed by argparse
        return int(exc.code or 0)
    if before is not None:
        before(args)
    try:
        return int(args.handler(args) or 0)
    except (KdoctError, OSError) as exc:
        if getattr(args, "verbose", False):
            raise  # -v: the whole traceback, for a bug rather than bad input
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
