"""Subcommands of `python -m service`: each module has `register(subparsers)`."""
