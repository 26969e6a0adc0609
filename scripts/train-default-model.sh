#!/usr/bin/env bash
# The default model `make run` serves (scripts/run-local.sh; bench/bundles.py trains it the same way):
# `python -m model_training final` with the recipe of model_training/configs/oct2017_sample.yaml on every
# labelled B-scan of data/oct2017-sample, for the epochs its cross-validation run validated, calibrated
# (temperature, safety-gate threshold) by that run's out-of-fold evidence (docs/TRAINING.md).
#
# Returns at once when the bundles are complete and were trained from this very recipe (config, data,
# training code, cross-validation evidence: the card's recipe stamp); else trains them (about 8 minutes
# on 2 CPU cores). A model from another recipe (after a `git pull`, say) is retrained, the old one moved
# to DIR.previous; KDOCT_STALE_MODEL=keep serves it anyway (with a warning), =fail stops with exit 2.
#     scripts/train-default-model.sh [DIR]     (default var/default-model)
set -euo pipefail
PY=${PY:-.venv/bin/python}
MODEL_DIR=${1:-${MODEL_DIR:-var/default-model}}
results=model_training/configs/results/oct2017_sample
exec "$PY" -m model_training final --config model_training/configs/oct2017_sample.yaml --out "$MODEL_DIR" \
    --epochs-from "$results/report.json" --oof "$results/oof.json" --if-stale "${KDOCT_STALE_MODEL:-retrain}"
