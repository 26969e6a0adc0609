#!/usr/bin/env bash
# `make run`: train the default model once on the real OCT B-scans that ship in data/oct2017-sample
# (`python -m model_training final`: the recipe of model_training/configs/oct2017_sample.yaml, for the
# epochs its cross-validation run validated), create the local database and API key, then serve on
# http://$HOST:$PORT with the embedded defaults (SQLite, ONNX Runtime on the CPU).
set -euo pipefail
PY=${PY:-.venv/bin/python}
MODEL_DIR=${MODEL_DIR:-var/default-model}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}

# Returns at once when the bundles are complete; else trains them (minutes on 2 CPU cores).
"$PY" -m model_training final --config model_training/configs/oct2017_sample.yaml --out "$MODEL_DIR" \
    --epochs-from model_training/configs/results/oct2017_sample/report.json

"$PY" -m service db upgrade
key=$("$PY" -m service apikey ensure-local)
cat <<MSG

kdoct: http://$HOST:$PORT        API docs: http://$HOST:$PORT/docs
Model: $MODEL_DIR/student (card: $MODEL_DIR/MODEL_CARD.md)
Local API key (also in var/local-api-key):
    $key
Try it:
    curl -H "Authorization: Bearer $key" -F file=@data/oct2017-sample/CNV/CNV-2116022-1.jpeg http://$HOST:$PORT/classify

MSG
export KDOCT_STUDENT_BUNDLE="$MODEL_DIR/student" KDOCT_TEACHER_BUNDLE="$MODEL_DIR/teacher"
exec "$PY" -m service serve --host "$HOST" --port "$PORT"
