"""What the ingress layer (service/ingress/) costs a POST /classify, two ways (issue 23, target < 1 ms p50):

1. its steps in-process, on real OCT2017 JPEGs: the header probe (service.imaging.probe_upload), the gate
   (scope, key count, slot, ticket charges and their return) and the body read within its budgets
   (read_body and the replay the app consumes), medians per request;
2. end to end, before and after, in one sitting: the same real B-scans posted one at a time (closed loop,
   concurrency 1) to this checkout's service and to `--before-root` (a checkout of the code before the
   layer, e.g. `git worktree add /tmp/before e3d45e0`), alternating rounds; client p50s of each round.

    python -m bench.ingress_cost [--before-root DIR] [--rounds 4] [--seconds 6] [--write-docs]

The service serves the tests' tiny student (64 px): inference is small, so the layer's share of each
request is as large as it gets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from bench.bundles import CACHE, REPO_ROOT, SAMPLE_DIR, sample_jpegs
from bench.report import machine, markdown_table, median_ms, now, write_block
from kdoct_testing.load_client import build_classify_requests, closed_loop
from kdoct_testing.server import running_service
from service.admission import Admission
from service.imaging import ImageLimits, probe_upload
from service.ingress.body import BodyLimits, MemoryShare, read_body
from service.ingress.budget import MemoryBudget, RequestLimits
from service.ingress.doors import CLASSIFY
from service.ingress.gate import IngressGate
from service.security import Client

BEGIN, END = "<!-- ingress_cost:begin -->", "<!-- ingress_cost:end -->"
TARGET_MS = 1.0
_CHUNK = 64 << 10  # what uvicorn hands over per receive()


def _multipart(data: bytes) -> bytes:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s"\r\n\r\n'.encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


def steps(repeats: int) -> list[list[str]]:
    uploads = [path.read_bytes() for path in sample_jpegs(40)]
    limits = ImageLimits()
    gate = IngressGate(Admission(64), MemoryBudget(1 << 30), RequestLimits(256, 150_000_000))
    gate.input_bytes_per_frame = 3 * 384 * 384 * 4
    client = Client(id="bench", scopes=frozenset({"classify"}))
    share = MemoryShare(256 << 20)
    body_limits = BodyLimits(64 << 20, "", 30.0, 16384.0)
    bodies = [_multipart(data) for data in uploads]

    def probe() -> None:
        for data in uploads:
            probe_upload(data, limits)

    async def through_the_gate() -> None:
        for data in uploads:
            ticket = await gate.enter(CLASSIFY, client)
            ticket.charge_bytes(len(data), "the request body")
            ticket.charge_images([probe_shape])
            ticket.close()

    probe_shape = probe_upload(uploads[0], limits)

    async def read_all() -> None:
        for body in bodies:
            chunks = [body[i : i + _CHUNK] for i in range(0, len(body), _CHUNK)]
            messages = iter(
                {"type": "http.request", "body": c, "more_body": n < len(chunks) - 1}
                for n, c in enumerate(chunks)
            )

            async def receive(messages=messages):
                return next(messages)

            ticket = await gate.enter(CLASSIFY, client)
            read = await read_body(
                receive, declared=len(body), limits=body_limits, share=share, ticket=ticket
            )
            replay = read.replay(receive)
            while (await replay())["more_body"]:
                pass
            ticket.close()

    count = len(uploads)
    loop = asyncio.new_event_loop()
    timed = {
        "header probe (probe_upload)": probe,
        "gate: scope, key count, slot, ticket charges and close": lambda: loop.run_until_complete(
            through_the_gate()
        ),
        "body read within its budgets, and its replay": lambda: loop.run_until_complete(read_all()),
    }
    rows = [[name, f"{median_ms(function, repeats) / count:.3f}"] for name, function in timed.items()]
    loop.close()
    total = sum(float(row[1]) for row in rows)
    rows.append(["**the layer, per request**", f"**{total:.3f}**"])
    return rows


def _env(root: Path, workdir: Path, bundle: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str(bundle),
        KDOCT_SECOND_OPINION="never",
        KDOCT_AUTH="disabled",
        KDOCT_DATABASE_URL=f"sqlite:///{workdir / 'records.db'}",
        KDOCT_SPOOL_DIR=str(workdir / "spool"),
        KDOCT_AUDIT_KEY_FILE=str(workdir / "audit.key"),
        KDOCT_ANCHOR_FILE=str(workdir / "anchor.jsonl"),
        KDOCT_LOG_LEVEL="warning",
        PYTHONPATH=str(root),
    )
    return env


def end_to_end(before_root: Path, rounds: int, seconds: float) -> tuple[list[list[str]], float, float]:
    from kdoct_testing.bundles import build_tiny_bundles

    bundle = build_tiny_bundles(CACHE / "tiny-bundles", SAMPLE_DIR)["student"]
    p50s: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="kdoct-ingress-cost-") as tmp:
        services = {}
        with (
            running_service(_env(before_root, Path(tmp), bundle) | {"KDOCT_DATABASE_URL": f"sqlite:///{tmp}/b.db"},
                            Path(tmp), Path(tmp) / "before.log", ready_timeout_s=300) as before,
            running_service(_env(REPO_ROOT, Path(tmp), bundle) | {"KDOCT_DATABASE_URL": f"sqlite:///{tmp}/a.db",
                            "KDOCT_SPOOL_DIR": f"{tmp}/spool-after"},
                            Path(tmp), Path(tmp) / "after.log", ready_timeout_s=300) as after,
        ):  # fmt: skip
            services = {"before": before, "after": after}
            requests = {}
            for name, service in services.items():
                port = int(service.url.rsplit(":", 1)[1])
                requests[name] = (port, build_classify_requests(sample_jpegs(64), "127.0.0.1", port))
            for _ in range(rounds):
                for name in ("before", "after"):
                    port, built = requests[name]
                    result = asyncio.run(
                        closed_loop("127.0.0.1", port, built, concurrency=1, duration_s=seconds)
                    )
                    p50s[name].append(result.p(50))
    rows = [
        [name, " / ".join(f"{p:.2f}" for p in values), f"{statistics.median(values):.2f}"]
        for name, values in p50s.items()
    ]
    return rows, statistics.median(p50s["before"]), statistics.median(p50s["after"])


def section(before_root: Path | None, rounds: int, seconds: float, repeats: int) -> str:
    step_rows = steps(repeats)
    layer_ms = float(step_rows[-1][1].strip("*"))
    met = "met" if layer_ms < TARGET_MS else "NOT met"
    text = (
        f"Measured {now()} on {machine()}.\n\n"
        f"In-process, 40 real OCT2017 JPEGs (512x496 typical), medians of {repeats} rounds, ms per request "
        f"(target < {TARGET_MS} ms: **{met}**):\n\n" + markdown_table(["step", "ms per request"], step_rows)
    )
    if before_root is not None:
        rows, before, after = end_to_end(before_root, rounds, seconds)
        text += (
            f"\n\nEnd to end, POST /classify one at a time (tiny 64 px student, SQLite), {rounds} "
            f"alternating rounds of {seconds:g} s; client p50 of each round, ms:\n\n"
            + markdown_table(["code", "p50 per round", "median"], rows)
            + f"\n\nDifference of the medians: {after - before:+.2f} ms (after - before)."
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingress_cost", description=__doc__)
    parser.add_argument("--before-root", type=Path, help="a checkout of the code before the layer")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.ingress_cost " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = f"Command: `{command.strip()}`\n\n" + section(
        args.before_root.resolve() if args.before_root else None, args.rounds, args.seconds, args.repeats
    )
    print(text)
    if args.write_docs:
        write_block(BEGIN, END, text, heading="Cost of the ingress layer on POST /classify (issue 23)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
