"""The shared command-line scaffold: bad input is one `error:` line and exit 2; -v shows the traceback."""

from __future__ import annotations

import argparse
import sys
import types

import pytest

from kdoct import cli
from kdoct.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    def register(subparsers) -> None:
        def fail(args) -> int:
            raise ConfigError("teacher.epochs: must be at least 1")

        subparsers.add_parser("fail").set_defaults(handler=fail)

    module = types.ModuleType("kdoct_cli_scaffold_commands")
    module.register = register
    sys.modules.setdefault(module.__name__, module)  # what build_parser imports by name
    return cli.build_parser("prog", "a test", [module.__name__])


def test_bad_input_is_one_line_and_exit_2(capsys) -> None:
    assert cli.run(_parser(), ["fail"]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == "error: teacher.epochs: must be at least 1\n"


def test_verbose_shows_the_traceback(capsys) -> None:
    with pytest.raises(ConfigError, match="teacher.epochs"):
        cli.run(_parser(), ["-v", "fail"])


def test_help_and_usage_errors_exit_as_argparse_says(capsys) -> None:
    assert cli.run(_parser(), ["--help"]) == 0
    assert cli.run(_parser(), ["nope"]) == 2
