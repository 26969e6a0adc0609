"""What the typed answer costs per request: the pipeline's postprocess (results -> a validated
ClassifyResponse), the records derived from it, and FastAPI's schema-checked serialisation, against
the plain dict and json.dumps the route sent before (same content, same keys).

    python -m bench.answer_cost [--repeats 2000] [--write-docs]

Inference is left out (it is the same either way): the results are those of a three-class model, for
one B-scan without and with the teacher's opinion, and for a 32-frame DICOM volume. Medians of
`repeats` rounds, both paths timed alternately in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from fastapi.routing import serialize_response

from bench.report import machine, markdown_table, now, write_block
from service.api.classify import router
from service.inference.classifier import Classification, Opinion, Result
from service.pipeline import ClassificationPipeline
from service.records import prediction_rows

DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- answer_cost:begin -->", "<!-- answer_cost:end -->"
STUDENT = {"name": "kdoct-student-neh3", "version": "1.0.0", "sha256": "9" * 64}
TEACHER = {"name": "kdoct-teacher-neh3", "version": "1.0.0", "sha256": "7" * 64}


def _result(with_opinion: bool, **opinion_extra) -> Result:
    probabilities = {"normal": 0.0312345678, "drusen": 0.0587654321, "cnv": 0.9100000001}
    opinion = None
    if with_opinion:
        opinion = Opinion(TEACHER, "cnv", dict(probabilities), 0.91, True, **opinion_extra)
    return Result(dict(probabilities), "cnv", 0.91, False, opinion)


def _case(frames: int, with_opinion: bool) -> tuple[SimpleNamespace, Classification]:
    is_dicom = frames > 1
    upload = SimpleNamespace(
        format="dicom" if is_dicom else "jpeg", frames=[None] * frames, width=512, height=496,
        input_sha256="3" * 64, is_volume=is_dicom, volume_id="5" * 64 if is_dicom else None,
    )  # fmt: skip
    volume = _result(with_opinion, frames_reviewed=frames) if is_dicom else None
    result = Classification([_result(with_opinion) for _ in range(frames)], volume, 0.1, 8.3, with_opinion)
    return upload, result


def _plain_answer(upload, result: Classification) -> tuple[list[dict], bytes]:
    """The route's former body and records: dicts throughout, json.dumps to encode."""

    def opinion(item: Result) -> dict | None:
        o = item.second_opinion
        if o is None:
            return None
        values = {"model": o.model, "label": o.label, "probabilities": o.probabilities,
                  "confidence": o.confidence, "agrees": o.agrees}  # fmt: skip
        return values if o.frames_reviewed is None else {**values, "frames_reviewed": o.frames_reviewed}

    common = {
        "request_id": "h",
        "client_id": None,
        "model_name": STUDENT["name"],
        "input_sha256": upload.input_sha256,
    }
    frames = None
    records = [{**common, "label": f.label, "second_opinion": opinion(f)} for f in result.frames]
    if upload.format == "dicom":
        frames = [
            {"frame_index": i, "prediction_id": "p", "label": f.label, "probabilities": f.probabilities,
             "confidence": f.confidence, "refer": f.refer, "second_opinion": opinion(f)}
            for i, f in enumerate(result.frames)
        ]  # fmt: skip
    top = result.volume or result.frames[0]
    body = {
        "prediction_id": "p", "request_id": "r", "model": STUDENT, "label": top.label,
        "probabilities": top.probabilities, "confidence": top.confidence, "refer": top.refer,
        "second_opinion": opinion(top), "frames": frames, "volume_id": upload.volume_id,
        "input": {"format": upload.format, "width": upload.width, "height": upload.height,
                  "frames": len(upload.frames), "sha256": upload.input_sha256},
        "timing_ms": {"decode": 1.0, "queue": 0.1, "inference": 8.3, "total": 9.9},
    }  # fmt: skip
    return records, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def _typed_answer(pipeline, field, upload, result: Classification) -> bytes:
    answer = pipeline._postprocess(upload, result, "r", 1.0)
    answer.timing_ms.total = 9.9
    prediction_rows(answer, request_id_hash="h", client_id=None)
    return await serialize_response(field=field, response_content=answer, exclude_unset=True, dump_json=True)


def measure(repeats: int) -> list[list[str]]:
    classifier = SimpleNamespace(student=SimpleNamespace(loaded=SimpleNamespace(identity=lambda: STUDENT)))
    pipeline = ClassificationPipeline(intake=None, classifier=classifier, explainer=None)
    field = next(route for route in router.routes if route.path == "/classify").response_field
    loop = asyncio.new_event_loop()
    rows = []
    cases = [("B-scan, student only", 1, False), ("B-scan + teacher opinion", 1, True),
             ("DICOM volume, 32 frames + opinions", 32, True)]  # fmt: skip
    for name, frames, with_opinion in cases:
        upload, result = _case(frames, with_opinion)
        plain, typed = [], []
        for _ in range(repeats):
            began = time.perf_counter()
            _plain_answer(upload, result)
            plain.append(time.perf_counter() - began)
            began = time.perf_counter()
            loop.run_until_complete(_typed_answer(pipeline, field, upload, result))
            typed.append(time.perf_counter() - began)
        p, t = statistics.median(plain) * 1e3, statistics.median(typed) * 1e3
        rows.append([name, f"{p:.3f}", f"{t:.3f}", f"{t - p:+.3f}"])
    loop.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.answer_cost", description=__doc__)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--write-docs", action="store_true", help=f"put the table in {DOCS.name}")
    args = parser.parse_args(argv)
    rows = measure(args.repeats)
    command = "python -m bench.answer_cost " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    table = markdown_table(["answer", "plain dict + json.dumps (ms, p50)", "typed + validated (ms, p50)",
                            "overhead (ms)"], rows)  # fmt: skip
    text = (
        f"Measured {now()} on {machine()}, `{command.strip()}`: the cost of building, recording and "
        f"encoding one answer, inference excluded (median of {args.repeats} rounds, both paths "
        f"alternately in one run).\n\n{table}\n"
    )
    print(text)
    if args.write_docs:
        write_block(BEGIN, END, text, heading="The typed answer of POST /classify")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
