"""`python -m service <command>`. Each command lives in a module of COMMAND_MODULES that defines
`register(subparsers)`; the records issue adds `db`, `apikey` and `audit` the same way."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "service.commands.serve",
    "service.commands.db",
    "service.commands.apikey",
    "service.commands.audit",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="kdoct inference service")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
