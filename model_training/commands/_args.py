"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse
import sys

from kdoct.labels import CLASS_SETS


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def class_set(text: str) -> str:
    name = text.strip().lower()
    if name not in CLASS_SETS:
        raise argparse.ArgumentTypeError(
            f"unknown class set {text!r}: choose {' or '.join(sorted(CLASS_SETS))}"
        )
    return name


def show_progress() -> bool:
    """Progress bars only for a person watching a terminal, not in logs or CI."""
    return sys.stderr.isatty()
