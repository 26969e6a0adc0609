"""`python -m bench [--quick] [--only ITEMS]` (items: service, models, load, faults, fuzz, profile, fixes,
int8, overload, outage, ingress, dicom, shadow): run the benchmarks and rewrite their sections of
docs/BENCHMARKS.md (other sections of the file are kept)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time

from tqdm import tqdm

from bench.bundles import CACHE
from bench.report import machine, now, write_section

ITEMS = (
    "service", "models", "load", "faults", "fuzz", "profile", "fixes", "int8", "overload", "outage",
    "ingress", "dicom", "shadow",
)  # fmt: skip
log = logging.getLogger("bench")


def _run_item(item: str, quick: bool, state: dict) -> str:
    if item == "service":
        from bench.throughput import service_vs_bare

        text, figures = service_vs_bare(quick)
        state["service"] = figures
        return text
    if item == "models":
        from bench.teacher_vs_student import teacher_vs_student

        return teacher_vs_student(quick)
    if item == "load":
        from bench.load import fixed_rate_load

        return fixed_rate_load(quick, state.get("service"))
    if item == "faults":
        from bench.faults import faults

        return faults(quick)
    if item == "fuzz":
        from bench.fuzz import hostile_and_fuzz

        return hostile_and_fuzz(quick)
    if item == "profile":
        from bench.profile import profile_service

        return profile_service(quick)
    if item == "fixes":
        from bench.fixes import fixes_before_after

        return fixes_before_after(quick)
    if item == "int8":
        from bench.bundles import default_model
        from bench.int8 import int8_section

        model = default_model()
        repeats = 5 if quick else 15
        command = f"python -m bench.int8 --bundle {model.name}/student --split {model.name}/split.csv"
        return "## INT8 student against fp32 (the default model)\n\n" + int8_section(
            model / "student", model / "split.csv", repeats, f"{command} --repeats {repeats}"
        )
    if item == "overload":
        from bench.overload import overload_text

        return "## Goodput under overload (EfficientNet-B2 student, `KDOCT_MAX_QUEUE=4`)\n\n" + overload_text(
            "student", 4, 4.0 if quick else 8.0
        )
    if item == "outage":
        from bench.outage_replay import outage_replay_text

        return outage_replay_text(quick)
    if item == "ingress":
        from bench.ingress_cost import section

        # In-process steps only: the before/after needs a checkout of the code before the layer
        # (python -m bench.ingress_cost --before-root DIR).
        heading = "## Cost of the ingress layer on POST /classify\n\n"
        return heading + section(None, 0, 0.0, 20 if quick else 50)
    if item == "dicom":
        from bench.dicom_node import dicom_section

        return dicom_section(quick)
    if item == "shadow":
        from bench.shadow_cost import shadow_section

        return shadow_section(quick)
    raise ValueError(item)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about 5 minutes in all)")
    parser.add_argument(
        "--only",
        default=",".join(ITEMS),
        help=f"comma-separated items to run (default: all of {','.join(ITEMS)})",
    )
    args = parser.parse_args(argv)
    items = [item.strip() for item in args.only.split(",") if item.strip()]
    unknown = sorted(set(items) - set(ITEMS))
    if unknown:
        parser.error(f"unknown item(s) {', '.join(unknown)}: choose from {', '.join(ITEMS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll otherwise
    command = "python -m bench " + " ".join(
        shlex.quote(arg) for arg in (argv if argv is not None else sys.argv[1:])
    )
    write_section(
        "header",
        f"Last run: {now()} on {machine()}.\n\nCommand: `{command.strip()}` "
        f"(items: {', '.join(items)}; {'quick' if args.quick else 'full'} run). Figures on a shared CPU are "
        f"noisy: compare ratios measured side by side in one run, not absolute numbers across runs.",
    )
    state: dict = {}
    failed = []
    for item in tqdm(items, desc="bench", unit="item"):
        began = time.monotonic()
        try:
            text = _run_item(item, args.quick, state)
        except Exception as exc:  # noqa: BLE001 - one broken item must not lose the others' figures
            log.exception("bench item %s failed", item)
            failed.append(item)
            reason = f"{type(exc).__name__}: {exc}"
            text = f"## {item}\n\n**This item failed in the last run** ({reason}); see the log."
        write_section(item, text + f"\n\n_{item}: measured {now()}, {time.monotonic() - began:.0f} s._")
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "last-run.json").write_text(json.dumps(state, indent=2, default=str))
    if failed:
        log.error("failed items: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
