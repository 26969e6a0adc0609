"""`python -m model_training <command>`."""

from model_training.cli import main

raise SystemExit(main())
