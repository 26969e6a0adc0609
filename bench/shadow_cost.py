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

import httpx

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
    measured, shadowed = {}, {}
    for name, share in VARIANTS:
        workdir = CACHE / "runs" / f"shadow-{uuid.uuid4().hex[:6]}"
        workdir.mkdir(parents=True)
        url, drop = database_url("postgresql", workdir)
        settings = {"KDOCT_SHADOW_BUNDLE": str(candidate), "KDOCT_SHADOW_SHARE": share} if share else {}
        try:
            with ServiceProcess(student, workdir, database_url=url, settings=settings) as server:
                measured[name] = {}
                for level in CONCURRENCY:
                    before = _shadow_outcomes(server)
                    measured[name][level] = measure_service(server, seconds, concurrency=(level,))[level]
                    after = _shadow_outcomes(server)
                    shadowed[name, level] = {key: after.get(key, 0) - before.get(key, 0) for key in after}
        finally:
            drop()
    base = measured["no shadow"]
    rows = []
    for name, _ in VARIANTS:
        for level in CONCURRENCY:
            result, none = measured[name][level], base[level]
            outcomes = shadowed.get((name, level), {})
            taken = outcomes.get("stored", 0) + outcomes.get("not_stored", 0)
            offered = taken + outcomes.get("busy", 0)
            share_taken = f"{taken / offered:.0%} of {offered:.0f}" if offered else "-"
            rows.append([
                name, str(level), fmt(result.throughput), fmt(result.median()), fmt(result.p(95)),
                fmt(result.throughput / none.throughput, 2), fmt(result.median() / none.median(), 2),
                share_taken,
            ])  # fmt: skip
    header = ["variant", "concurrency", "answers/s", "p50 ms", "p95 ms", "answers/s vs none", "p50 vs none"]
    table = markdown_table([*header, "sampled requests shadowed"], rows)
    return (
        "## Cost of shadowing a candidate (issue 26)\n\n"
        f"`{command}`: the EfficientNet-B2 bench student ({student.name}) answering POST /classify with "
        "PostgreSQL records, one worker, without a shadow, then with a candidate of the same architecture "
        f"and size ({candidate.name}) shadowing every request or a quarter of them; closed loop, "
        f"{seconds:g} s per level, medians of the answered requests. Measured {now()} on {machine()} "
        f"(load average {load_before:.2f} before).\n\n{table}\n\n"
        "The answer never waits for the candidate: it runs after the answer is made, off the answer path, "
        "and not at all while requests wait for the student (the last column: the sampled requests it "
        "took). On a CPU its forward still takes the cores the next answer needs when one arrives meanwhile, "
        "which a closed loop at concurrency 1 does at once: there each shadowed request costs about a "
        "second forward of latency. Under a saturating load (concurrency 4 here) it takes none: the "
        "evidence accrues from spare capacity only. Shadow a share (KDOCT_SHADOW_SHARE) of a CPU fleet's "
        "traffic, on a replica with headroom, or on a GPU replica.\n"
    )


def _shadow_outcomes(server: ServiceProcess) -> dict[str, float]:
    """kdoct_shadow_results_total by outcome, from the service's /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    outcomes: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kdoct_shadow_results_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            outcomes[outcome] = outcomes.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shadow_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.shadow_cost" + (" --quick" if args.quick else "")
    write_section("shadow", shadow_section(args.quick, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
