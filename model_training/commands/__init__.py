"""One module per CLI subcommand; each exposes `register(subparsers)`, listed in cli.COMMAND_MODULES."""
