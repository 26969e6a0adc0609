"""What shadowing a candidate costs the answers (docs/LIFECYCLE.md): POST /classify latency and
throughput of the EfficientNet-B2 bench student with PostgreSQL records, without a shadow and with a
candidate of the same architecture scoring every request (KDOCT_SHADOW_SHARE=1) or a quarter of them,
measured one after the other in one run, closed loop at concurrency 1 and 4.

    python -m bench.shadow_cost [--quick]      (also `python -m bench --only shadow`)

The answer never waits for the candidate, but on a CPU the candidate's inference takes the same cores:
the figures show what that costs the answers.
"""

from __future__ import annotations

import argparse
import os
import uuid

from bench.bundles import CACHE, bench_bundle, bench_candidate_bundle
from bench.report import fmt, machine, markdown_table, now, write_section
from bench.server import ServiceProcess
from bench.throughput import database_url, measure_service

CONCURRENCY = (1, 4)
VARIANTS = (("no shadow", None), ("shadow, share 1.0", "1.0"), ("shadow, share 0.25", "0.25"))


def shadow_section(quick: bool, command: str = "python -m bench --only shadow") -> str:
    student, candidate = bench_bundle("student"), bench_candidate_bundle()
    seconds = 4.0 if quick else 12.0
    load_before = os.getloadavg()[0]
    measured = {}
    for name, share in VARIANTS:
        workdir = CACHE / "runs" / f"shadow-{uuid.uuid4().hex[:6]}"
        workdir.mkdir(parents=True)
        url, drop = database_url("postgresql", workdir)
        settings = {"KDOCT_SHADOW_BUNDLE": str(candidate), "KDOCT_SHADOW_SHARE": share} if share else {}
        try:
            with ServiceProcess(student, workdir, database_url=url, settings=settings) as server:
                measured[name] = measure_service(server, seconds, concurrency=CONCURRENCY)
        finally:
            drop()
    base = measured["no shadow"]
    rows = []
    for name, _ in VARIANTS:
        for level in CONCURRENCY:
            result, none = measured[name][level], base[level]
            rows.append([
                name, str(level), fmt(result.throughput), fmt(result.median()), fmt(result.p(95)),
                fmt(result.throughput / none.throughput, 2), fmt(result.median() / none.median(), 2),
            ])  # fmt: skip
    table = markdown_table(
        ["variant", "concurrency", "answers/s", "p50 ms", "p95 ms", "answers/s vs none", "p50 vs none"], rows
    )
    return (
        "## Cost of shadowing a candidate (issue 26)\n\n"
        f"`{command}`: the EfficientNet-B2 bench student ({student.name}) answering POST /classify with "
        "PostgreSQL records, one worker, without a shadow, then with a candidate of the same architecture "
        f"and size ({candidate.name}) shadowing every request or a quarter of them; closed loop, "
        f"{seconds:g} s per level, medians of the answered requests. Measured {now()} on {machine()} "
        f"(load average {load_before:.2f} before).\n\n{table}\n\n"
        "The answer never waits for the candidate (it runs after the answer is made, off the answer path), "
        "but on a CPU its inference takes the cores the next answers need: at share 1.0 each request costs "
        "two forwards. Shadow a share (KDOCT_SHADOW_SHARE) on a busy CPU fleet; on a GPU the candidate's "
        "batches interleave with the student's.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shadow_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.shadow_cost" + (" --quick" if args.quick else "")
    write_section("shadow", shadow_section(args.quick, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
