"""Goodput under overload: answered images per second when far more clients send than the service
admits, against the figure of a single client (issue 17, part 3).

    python -m bench.overload [--model tiny|student] [--queue 4] [--seconds 8] [--service-root DIR]
                             [--label TEXT] [--write-docs]

One service (`KDOCT_MAX_QUEUE`=4, batch size adaptive: 1 on CPU, decode threads = cores, so 4 + 1 + 2 = 7
requests admitted per worker on 2 cores)
is measured by closed-loop clients (kdoct_testing.load_client): 1 client, then 2x and 4x the
admitted number and 32. Two client behaviours: "resend at once" (a 503 is followed at once by the
next request: the worst case) and "honour Retry-After" (a 503 waits the seconds it names). Target:
at 32 clients, answered img/s >= 0.9 x the single-client figure. `--service-root` serves the code of
another checkout (e.g. the commit before admission, exported with `git archive`) for a before/after.
Models: `tiny` (the tests' 64 px student: decoding dominates, the hardest case for refusals) or
`student` (EfficientNet-B2 at 384 px with random weights, bench/bundles.py: realistic inference).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
from pathlib import Path

from bench.bundles import CACHE, REPO_ROOT, SAMPLE_DIR, bench_bundle, sample_jpegs
from bench.report import fmt, machine, markdown_table, now
from kdoct_testing.load_client import LoadResult, build_classify_requests, closed_loop
from kdoct_testing.server import running_service

DOCS = REPO_ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- overload:begin -->", "<!-- overload:end -->"
TARGET = 0.9


def honouring_retry_after(host: str, port: int, requests: list[bytes], **kwargs):
    """`closed_loop`, except that a client answered 503 waits the Retry-After it was given."""
    return closed_loop(host, port, requests, honour_retry_after=True, **kwargs)


def _bundle(model: str) -> Path:
    if model == "student":
        return bench_bundle("student")
    from kdoct_testing.bundles import build_tiny_bundles

    return build_tiny_bundles(CACHE / "tiny-bundles", SAMPLE_DIR)["student"]


def _env(
    bundle: Path, workdir: Path, queue: int, service_root: Path, settings: dict[str, str] | None = None
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str(bundle),
        KDOCT_SECOND_OPINION="never",
        KDOCT_AUTH="disabled",  # the local SQLite store, as `make run`: records are still written
        KDOCT_DATABASE_URL=f"sqlite:///{workdir / 'records.db'}",
        KDOCT_SPOOL_DIR=str(workdir / "spool"),
        KDOCT_AUDIT_KEY_FILE=str(workdir / "audit.key"),
        KDOCT_ANCHOR_FILE=str(workdir / "anchor.jsonl"),
        KDOCT_MAX_QUEUE=str(queue),
        KDOCT_LOG_LEVEL="warning",
        PYTHONPATH=str(service_root),
    )
    env.update(settings or {})
    return env


DRIVERS = (("resend at once", closed_loop), ("honour Retry-After", honouring_retry_after))


def measure(
    model: str, queue: int, seconds: float, service_root: Path, settings: dict[str, str] | None = None
) -> tuple[list[list[str]], float, float]:
    """The table's rows, the single-client figure and the 32-client resend-at-once ratio."""
    admitted = queue + 1 + (os.cpu_count() or 1)  # batch size 1 on CPU; decode threads = cores
    levels = [(2 * admitted, "2x"), (4 * admitted, "4x"), (32, f"{32 / admitted:.1f}x")]
    with tempfile.TemporaryDirectory(prefix="kdoct-overload-") as tmp:
        workdir = Path(tmp)
        env = _env(_bundle(model), workdir, queue, service_root, settings)
        with running_service(env, workdir, workdir / "server.log", ready_timeout_s=600) as service:
            port = int(service.url.rsplit(":", 1)[1])
            requests = build_classify_requests(sample_jpegs(64), "127.0.0.1", port)
            alone = asyncio.run(closed_loop("127.0.0.1", port, requests, concurrency=1, duration_s=seconds))
            single = alone.throughput
            rows = [_row("1", "-", "-", alone, single)]
            ratio_32 = float("nan")
            for clients, overload in levels:
                for behaviour, driver in DRIVERS:
                    result = asyncio.run(
                        driver("127.0.0.1", port, requests, concurrency=clients, duration_s=seconds)
                    )
                    rows.append(_row(str(clients), overload, behaviour, result, single))
                    if clients == 32 and behaviour == "resend at once":
                        ratio_32 = result.throughput / single
    return rows, single, ratio_32


def _row(clients: str, overload: str, behaviour: str, result: LoadResult, single: float) -> list[str]:
    shed = result.statuses.get("503", 0)
    errors = sum(count for status, count in result.statuses.items() if status.startswith("error"))
    other = sum(
        count for status, count in result.statuses.items() if status[0].isdigit() and status[0] not in "25"
    )
    return [
        clients,
        overload,
        behaviour,
        fmt(result.throughput),
        fmt(result.throughput / single, 2) if single else "n/a",
        fmt(shed / result.duration_s),
        str(errors + other),
        fmt(result.p(50)),
        fmt(result.p(99)),
    ]


HEADER = [
    "clients", "overload", "clients on 503", "answered img/s", "x single client", "503/s",
    "errors", "answered p50 ms", "answered p99 ms",
]  # fmt: skip


def overload_text(
    model: str,
    queue: int,
    seconds: float,
    service_root: Path = REPO_ROOT,
    settings: dict[str, str] | None = None,
) -> str:
    """The measured rows and the verdict against the target, as markdown."""
    rows, single, ratio = measure(model, queue, seconds, service_root, settings)
    met = "met" if ratio >= TARGET else "NOT met"
    return (
        f"Measured {now()} on {machine()}. Single client: {single:.1f} img/s; 32 clients resending at "
        f"once: {ratio:.2f} x that (target >= {TARGET}: **{met}**).\n\n{markdown_table(HEADER, rows)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--model", choices=("tiny", "student"), default="tiny")
    parser.add_argument("--queue", type=int, default=4, help="KDOCT_MAX_QUEUE")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument(
        "--service-root", type=Path, default=REPO_ROOT, help="the checkout whose service runs"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KDOCT_NAME=VALUE",
        help="a service setting (repeatable)",
    )
    parser.add_argument("--label", default="", help="a note on the code measured (e.g. 'before admission')")
    parser.add_argument("--write-docs", action="store_true", help=f"append the table to {DOCS.name}")
    args = parser.parse_args(argv)
    command = "python -m bench.overload " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = f"### {args.label or 'This checkout'}: `{command.strip()}`\n\n" + overload_text(
        args.model,
        args.queue,
        args.seconds,
        args.service_root.resolve(),
        dict(s.split("=", 1) for s in args.set),
    )
    print(text)
    if args.write_docs:
        current = DOCS.read_text()
        if BEGIN in current:  # runs are appended inside the section, each with its own command
            head, rest = current.split(BEGIN, 1)
            body, tail = rest.split(END, 1)
            current = f"{head}{BEGIN}{body.rstrip()}\n\n{text}\n{END}{tail}"
        else:
            current = (
                current.rstrip() + f"\n\n## Goodput under overload (issue 17)\n\n{BEGIN}\n{text}\n{END}\n"
            )
        DOCS.write_text(current)
    return 0


if __name__ == "__main__":
    sys.exit(main())
