#!/usr/bin/env bash
# `make run`: build the demo bundles once (synthetic OCT, model_training/configs/demo.yaml), create
# the local database and API key, then serve on http://$HOST:$PORT with the embedded defaults.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-var/demo}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
student="$DEMO_DIR/student"
teacher="$DEMO_DIR/teacher"

# Returns at once when both bundles are complete; else trains them (about 5 minutes on 2 CPU cores).
"$PY" -m model_training demo --config model_training/configs/demo.yaml --out "$DEMO_DIR"

"$PY" -m service db upgrade
key=$("$PY" -m service apikey ensure-local)
cat <<MSG

kdoct demo: http://$HOST:$PORT        API docs: http://$HOST:$PORT/docs
Local API key (also in var/local-api-key):
    $key
Try it:
    curl -H "Authorization: Bearer $key" -F file=@../shared/data/oct2017-sample/CNV/CNV-103044-1.jpeg http://$HOST:$PORT/classify

MSG
export KDOCT_STUDENT_BUNDLE="$student" KDOCT_TEACHER_BUNDLE="$teacher"
exec "$PY" -m service serve --host "$HOST" --port "$PORT"
