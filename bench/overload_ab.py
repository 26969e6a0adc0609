"""Goodput under overload, several versions side by side: every version's service runs at once and the
rounds alternate between them, so that the host's drift (up to 2x within minutes on a shared machine)
falls on all of them alike. Each round measures, per version, one client and 32 clients resending at
once, `seconds` each; the ratio of a round is its 32-client figure over its own single-client one.

    python -m bench.overload_ab --version before=/tmp/before --version after=. \\
        [--version 'after, no wait=.:KDOCT_ADMISSION_WAIT_S=0'] [--rounds 3] [--seconds 8] [--write-docs]

A version is LABEL=ROOT[:KDOCT_NAME=VALUE,...]: the checkout whose service runs and its settings.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.bundles import sample_jpegs
from bench.overload import TARGET, _bundle, _env
from bench.report import machine, markdown_table, now, write_block
from kdoct_testing.load_client import build_classify_requests, closed_loop
from kdoct_testing.server import running_service

BEGIN, END = "<!-- overload_ab:begin -->", "<!-- overload_ab:end -->"
CLIENTS = 32


def _version(text: str) -> tuple[str, Path, dict[str, str]]:
    label, _, rest = text.partition("=")
    root, _, settings = rest.partition(":")
    pairs = dict(item.split("=", 1) for item in settings.split(",") if item)
    return label, Path(root).resolve(), pairs


def measure(
    versions, model: str, queue: int, rounds: int, seconds: float
) -> dict[str, dict[str, list[float]]]:
    keys = ("single", "overload", "ratio", "p50", "refused")
    figures = {label: {key: [] for key in keys} for label, _, _ in versions}
    with tempfile.TemporaryDirectory(prefix="kdoct-overload-ab-") as tmp, ExitStack() as stack:
        ports = {}
        for index, (label, root, settings) in enumerate(versions):
            workdir = Path(tmp) / str(index)
            workdir.mkdir()
            env = _env(_bundle(model), workdir, queue, root, settings)
            service = stack.enter_context(
                running_service(env, workdir, workdir / "server.log", ready_timeout_s=600)
            )
            port = int(service.url.rsplit(":", 1)[1])
            ports[label] = (port, build_classify_requests(sample_jpegs(64), "127.0.0.1", port))
        for _ in range(rounds):
            for label, (port, requests) in ports.items():
                alone = asyncio.run(
                    closed_loop("127.0.0.1", port, requests, concurrency=1, duration_s=seconds)
                )
                crowd = asyncio.run(
                    closed_loop("127.0.0.1", port, requests, concurrency=CLIENTS, duration_s=seconds)
                )
                figures[label]["single"].append(alone.throughput)
                figures[label]["overload"].append(crowd.throughput)
                figures[label]["ratio"].append(crowd.throughput / alone.throughput)
                figures[label]["p50"].append(crowd.p(50))
                figures[label]["refused"].append(crowd.statuses.get("503", 0) / crowd.duration_s)
                print(label, figures[label], flush=True)
    return figures


def report(figures, command: str, rounds: int, seconds: float) -> str:
    rows = []
    for label, values in figures.items():
        ratio = statistics.median(values["ratio"])
        rows.append([
            label,
            " / ".join(f"{v:.1f}" for v in values["single"]),
            " / ".join(f"{v:.1f}" for v in values["overload"]),
            " / ".join(f"{v:.2f}" for v in values["ratio"]),
            " / ".join(f"{v:.0f}" for v in values["p50"]),
            " / ".join(f"{v:.0f}" for v in values["refused"]),
            f"**{ratio:.2f}** ({'met' if ratio >= TARGET else 'NOT met'})",
        ])  # fmt: skip
    header = [
        "version", "1 client img/s (rounds)", f"{CLIENTS} clients img/s", "ratio",
        f"{CLIENTS} clients: answered p50 ms", "503/s", "median ratio",
    ]  # fmt: skip
    return (
        f"Command: `{command}`\n\nMeasured {now()} on {machine()}; {rounds} alternating rounds of "
        f"{seconds:g} s per level; {CLIENTS} clients resending at once (target: median ratio >= "
        f"{TARGET}).\n\n" + markdown_table(header, rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload_ab", description=__doc__)
    parser.add_argument("--version", action="append", required=True, help="LABEL=ROOT[:KDOCT_X=V,...]")
    parser.add_argument("--model", choices=("tiny", "student"), default="student")
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    versions = [_version(text) for text in args.version]
    command = "python -m bench.overload_ab " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = report(
        measure(versions, args.model, args.queue, args.rounds, args.seconds),
        command,
        args.rounds,
        args.seconds,
    )
    print(text)
    if args.write_docs:
        write_block(BEGIN, END, text, heading="Goodput under overload, versions side by side (issue 23)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
