"""The safety gate's acceptance check against a running service: the real uvicorn server on a trained
model (the default one of `make run`), sent natural photographs, rendered text, noise, blank frames and
the model's held-out test B-scans over HTTP (its training B-scans for a model trained on every patient).

    python -m bench.safety_acceptance [--model-dir var/default-model]

Prints, per group, how many answers were gradable: false (the acceptance: every photograph, blank frame
and noise image refused; at least 90 % of the B-scans gradable). Exits 1 when it does not hold.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
import tempfile
from pathlib import Path

import httpx
from PIL import Image

from bench.report import machine, markdown_table, now
from kdoct_testing.server import running_service
from model_training.data.final_split import read_final_split
from model_training.evaluation.gate_report import non_oct_images

REPO_ROOT = Path(__file__).resolve().parents[1]
_SCANS = "held-out test B-scans"
_TRAINING_SCANS = "training B-scans (the model trained on every patient)"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _post(client: httpx.Client, data: bytes) -> dict:
    response = client.post("/classify", files={"file": ("upload", data)}, params={"second_opinion": "never"})
    response.raise_for_status()
    return response.json()


def check(model_dir: Path) -> tuple[list[list[str]], bool]:
    split = read_final_split(model_dir / "split.csv")
    groups = {name: [_png(image) for image in images.values()] for name, images in non_oct_images().items()}
    # A model trained on every patient has no held-out B-scan: its training B-scans check that the
    # service passes real B-scans; the held-out rate is the cross-validation's (`oof`, docs/RESULTS.md).
    scans = split["test"] or split["train"]
    groups[_SCANS if split["test"] else _TRAINING_SCANS] = [
        Path(sample.path).read_bytes() for sample in scans
    ]
    workdir = Path(tempfile.mkdtemp(prefix="kdoct-acceptance-"))
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str((model_dir / "student").resolve()),
        KDOCT_AUTH="disabled",
        KDOCT_DATABASE_URL=f"sqlite:///{workdir / 'kdoct.db'}",
        KDOCT_SPOOL_DIR=str(workdir / "spool"),
        KDOCT_LOG_LEVEL="warning",
        PYTHONPATH=str(REPO_ROOT),
    )
    rows, holds = [], True
    log_path = workdir / "server.log"
    with (
        running_service(env, REPO_ROOT, log_path, ready_timeout_s=120) as service,
        httpx.Client(base_url=service.url, timeout=60) as client,
    ):
        for name, uploads in groups.items():
            answers = [_post(client, data) for data in uploads]
            refused = sum(answer["gradable"] is False for answer in answers)
            reasons = sorted({answer["reason"] for answer in answers if answer["reason"]})
            share = f"{100 * refused / len(answers):.1f} %"
            rows.append([name.replace("_", " "), str(len(answers)), str(refused), share, ", ".join(reasons)])
            if name in (_SCANS, _TRAINING_SCANS):
                holds &= (len(answers) - refused) / len(answers) >= 0.9
            elif name in ("natural_photographs", "noise", "blank"):
                holds &= refused == len(answers)
    return rows, holds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.safety_acceptance", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "var" / "default-model")
    args = parser.parse_args(argv)
    rows, holds = check(args.model_dir)
    command = "python -m bench.safety_acceptance " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    table = markdown_table(["sent to POST /classify", "images", "gradable: false", "share", "reasons"], rows)
    print(f"Measured {now()} on {machine()}, `{command.strip()}`:\n\n{table}\n")
    print("acceptance holds" if holds else "acceptance does NOT hold")
    return 0 if holds else 1


if __name__ == "__main__":
    raise SystemExit(main())
