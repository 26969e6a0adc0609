#!/usr/bin/env bash
# `make run`: train the default model once on the real OCT B-scans that ship in data/oct2017-sample
# (`python -m model_training final`: the recipe of model_training/configs/oct2017_sample.yaml, for the
# epochs its cross-validation run validated, on every labelled image), create the local database and
# API key, then serve on http://$HOST:$PORT with the embedded defaults (SQLite, ONNX Runtime on the
# CPU), and the DICOM node beside it (AE KDOCT on 127.0.0.1:11112 by default; docs/INTEGRATION.md).
set -euo pipefail
PY=${PY:-.venv/bin/python}
MODEL_DIR=${MODEL_DIR:-var/default-model}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}

# Returns at once when the default model is current; else trains it (about 8 minutes on 2 CPU cores):
# a model of another recipe (after a `git pull`) is retrained unless KDOCT_STALE_MODEL=keep.
PY="$PY" scripts/train-default-model.sh "$MODEL_DIR"

"$PY" -m service db upgrade
key=$("$PY" -m service apikey ensure-local)
cat <<MSG

kdoct: http://$HOST:$PORT        API docs: http://$HOST:$PORT/docs
Model: $MODEL_DIR/student (card: $MODEL_DIR/MODEL_CARD.md)
Local API key (also in var/local-api-key):
    $key
Try it:
    curl -H "Authorization: Bearer $key" -F file=@data/oct2017-sample/CNV/CNV-2116022-1.jpeg http://$HOST:$PORT/classify
DICOM node: AE ${KDOCT_DICOM_AE_TITLE:-KDOCT} on ${KDOCT_DICOM_HOST:-127.0.0.1}:${KDOCT_DICOM_PORT:-11112}, callers: ${KDOCT_DICOM_CALLERS:-none (set KDOCT_DICOM_CALLERS)}

MSG
export KDOCT_STUDENT_BUNDLE="$MODEL_DIR/student" KDOCT_TEACHER_BUNDLE="$MODEL_DIR/teacher"
# The node is its own process, as in production. Ctrl-C or SIGTERM stops both (each drains first).
"$PY" -m service dicom-node &
node=$!
"$PY" -m service serve --host "$HOST" --port "$PORT" &
api=$!
stop() { kill -TERM "$api" "$node" 2>/dev/null || true; }
trap stop INT TERM
status=0
wait "$api" || status=$?
while kill -0 "$api" 2>/dev/null; do wait "$api" || status=$?; done  # a signal ended the wait: drain
stop
wait "$node" || true
exit "$status"
