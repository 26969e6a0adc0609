"""The model_training command line: `python -m model_training <command> --help`.

Each subcommand lives in its own module under model_training/commands and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`. A KdoctError (bad input,
bad data) becomes one line `error: ...` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from kdoct.errors import KdoctError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES = [
    "model_training.commands.synth",
    "model_training.commands.index",
    "model_training.commands.folds",
    "model_training.commands.teacher",
    "model_training.commands.distill",
    "model_training.commands.cv",
    "model_training.commands.final",
    "model_training.commands.results",
    "model_training.commands.export",
    "model_training.commands.evaluate",
    "model_training.commands.bench",
]

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_training",
        description="KD-OCT training tools: data, folds, training, export.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): already printed by argparse
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KdoctError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # an unwritable --out, a full disk: the message names the file
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
