"""The model_training command line: `python -m model_training <command> --help`, built with the
scaffold both command lines share (kdoct/cli.py): one module per subcommand under
model_training/commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kdoct import cli

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES = [
    "model_training.commands.synth",
    "model_training.commands.index",
    "model_training.commands.folds",
    "model_training.commands.teacher",
    "model_training.commands.distill",
    "model_training.commands.cv",
    "model_training.commands.final",
    "model_training.commands.oof",
    "model_training.commands.ablation",
    "model_training.commands.gate_report",
    "model_training.commands.results",
    "model_training.commands.export",
    "model_training.commands.evaluate",
    "model_training.commands.efficiency",
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser(
        "python -m model_training", "KD-OCT training tools: data, folds, training, export.", COMMAND_MODULES
    )


def _logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), argv, before=_logging)
