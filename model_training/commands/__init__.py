"""One module per CLI subcommand; each exposes `register(subparsers)`, listed in cli.COMMAND_MODULES.

The CLI builds its parser from every command module, for `--help` as for any command, so a command
module imports the stage it runs (and torch, timm, sklearn or ONNX Runtime behind it) inside its
handler, only when the command runs, and says so there (`# deferred: see commands/__init__.py`).
Everything else is imported at the top."""
