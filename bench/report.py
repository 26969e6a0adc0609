"""docs/BENCHMARKS.md: each bench item owns the text between its own markers; everything else in the
file (sections other people add, such as GPU figures or Grad-CAM costs) is left as it is."""

from __future__ import annotations

import math
import platform
import re
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.bundles import REPO_ROOT

__all__ = ["DOCS", "fmt", "machine", "markdown_table", "median_ms", "write_section"]

DOCS = REPO_ROOT / "docs" / "BENCHMARKS.md"
TITLE = """# Benchmarks

Everything between `<!-- bench:...:begin/end -->` markers is rewritten by `python -m bench` (`make bench`
runs the full set, about 20 minutes; `python -m bench --quick` about 5; `--only service,load,...` picks
items: service, models, load, faults, fuzz, profile, fixes). Other sections (GPU, explanations) are kept
as they are. Each item states its target and, in bold, whether this run met it. Numbers measured while other
work shares the 2 CPU cores are noisy; compare the ratios measured side by side within one run.
"""


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import os

    cores = len(os.sched_getaffinity(0))
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, {cores} cores, Python {platform.python_version()}, {system}"


def median_ms(function, repeats: int) -> float:
    """The median milliseconds of `repeats` calls of `function`, after one call to warm it up."""
    function()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(key: str, text: str, path: Path = DOCS) -> None:
    """Put `text` between `<!-- bench:KEY:begin -->` and its end marker, appending the block if new."""
    write_block(f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->", text, path=path)


def write_block(begin: str, end: str, text: str, heading: str | None = None, path: Path = DOCS) -> None:
    """Put `text` between the markers `begin` and `end`; a new block is appended (under `## heading`)."""
    block = f"{begin}\n{text.strip()}\n{end}"
    current = path.read_text() if path.exists() else TITLE
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current)
    else:
        title = f"## {heading}\n\n" if heading else ""
        updated = current.rstrip() + "\n\n" + title + block + "\n"
    path.write_text(updated)
