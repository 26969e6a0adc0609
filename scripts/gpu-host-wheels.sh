#!/usr/bin/env bash
# For `python -m bench.gpu_serving` on a GPU host that has PyTorch, timm, numpy, onnxruntime, pillow,
# httpx and prometheus-client but not the service's web and database packages, and no package index:
# downloads those as wheels for the host's Python (default 3.12, x86-64 Linux) into .whl/, at the
# versions of this checkout's .venv. On the host, with the repository (and .whl/) copied over:
#
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 -m bench.gpu_serving --images data/oct2017-sample --out serve.json
#
# (PYTHONPATH rather than installing the project, which would pull this project's torch pin.)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_VERSION=${PYTHON_VERSION:-3.12}
OUT=${OUT:-.whl}
PACKAGES=(
    fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types
    annotated-doc typing-inspection typing-extensions opentelemetry-api anyio python-multipart
    uvicorn httptools sqlalchemy greenlet alembic mako pydicom highdicom pyjpegls
)

pins=$(.venv/bin/python - "${PACKAGES[@]}" <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
mkdir -p "$OUT"
for pin in $pins; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$OUT" \
        --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "$pin"
done
echo "$(find "$OUT" -name '*.whl' | wc -l) wheels in $OUT/ ($(du -sh "$OUT" | cut -f1))"
