"""Item 5: the hostile-input corpus, schemathesis over the OpenAPI schema and the decoder fuzz:
tests/hostile run with many more examples than in `make test`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from bench.bundles import REPO_ROOT
from bench.report import markdown_table

__all__ = ["hostile_and_fuzz"]

ARTIFACTS = REPO_ROOT / "test-artifacts"


def hostile_and_fuzz(quick: bool) -> str:
    decoder_examples = 300 if quick else 4000
    api_examples = 25 if quick else 150
    env = dict(
        os.environ, KDOCT_FUZZ_EXAMPLES=str(decoder_examples), KDOCT_FUZZ_API_EXAMPLES=str(api_examples)
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/hostile",
        "-q",
        "-p",
        "no:cacheprovider",
        "--show-capture=no",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", result.stdout, re.MULTILINE)
    outcome = summary[-1] if summary else f"pytest exited {result.returncode}"
    corpus = json.loads((ARTIFACTS / "hostile-corpus.json").read_text())
    api = json.loads((ARTIFACTS / "hostile-schemathesis.json").read_text())
    rows = [
        [name, str(case["status"]), "/".join(map(str, case["expected"])), f"{case['ms']:.0f}"]
        for name, case in corpus["cases"].items()
    ]
    failures = ""
    if result.returncode != 0:
        failed = re.findall(r"^FAILED (.*)$", result.stdout, re.MULTILINE)
        failures = "\n\n**Failures:**\n\n" + "\n".join(f"- `{line}`" for line in failed[:20])
    return (
        "\n\n".join(
            [
                "## 5. Hostile input",
                f"`KDOCT_FUZZ_EXAMPLES={decoder_examples} KDOCT_FUZZ_API_EXAMPLES={api_examples} "
                f"python -m pytest tests/hostile` against a real uvicorn server (tiny test bundles; "
                f"`make test` runs the same suite with 150/25 examples): **{outcome}**.",
                f"Corpus: {corpus['kinds']} kinds of upload, {corpus['server_errors']} answers 5xx, server "
                f"alive afterwards; RSS {corpus['rss_baseline_mb']:.0f} MB before, grew by "
                f"{corpus['rss_growth_mb']:.1f} MB over the corpus. Schemathesis: {api['operations']} "
                f"operations, {api['requests']} generated requests, statuses "
                f"{json.dumps(api['statuses'], sort_keys=True)}. Decoder fuzz: {decoder_examples} mutated "
                f"PNG/JPEG/TIFF/BMP/DICOM files and {decoder_examples} garbage-behind-magic inputs, each "
                f"decoded or refused with a 4xx problem. Found by the decoder fuzz and fixed: a DICOM whose "
                f"file-meta element had a corrupt VR raised NotImplementedError on first access, after "
                f"`dcmread`, i.e. a 500; service/imaging.py now converts every element in its guard (422).",
                markdown_table(["upload", "status", "expected", "ms"], rows),
            ]
        )
        + failures
    )
