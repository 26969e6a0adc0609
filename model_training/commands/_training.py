"""Arguments and set-up shared by the training commands (teacher, distill, cv)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from model_training.config import ExperimentConfig, load_config
from model_training.data.folds import check_test_isolation
from model_training.runs.run_data import prepare_folds
from model_training.train.distributed import DistContext, init_distributed

log = logging.getLogger(__name__)


def add_config_arguments(parser: argparse.ArgumentParser, *, fold: bool) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (model_training/configs/*.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="run directory (folds.csv, fold_K/...)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set teacher.epochs=3 --set data.path=/data/oct (repeatable)",
    )
    if fold:
        parser.add_argument("--fold", type=int, required=True, help="fold number (0..k-1)")
        parser.add_argument("--resume", action="store_true", help="continue from fold_K/work/<role>/last.pt")


def setup(args: argparse.Namespace) -> tuple[ExperimentConfig, DistContext]:
    """Load and check the config (refusals happen here, before any work), then set up the device/DDP."""
    config = load_config(args.config, args.overrides)
    if config.threads:
        torch.set_num_threads(config.threads)
    context = init_distributed(config.device)
    if not context.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs for everyone
    return config, context


def teardown(context: DistContext) -> None:
    if context.enabled:
        dist.destroy_process_group()


def fold_split(config, args: argparse.Namespace, context) -> dict:
    """The fold's train/val/test split from the run's folds.csv, refused if a test patient leaks."""
    split = prepare_folds(config, args.out, context).split(args.fold)
    check_test_isolation(split, args.fold)
    return split
