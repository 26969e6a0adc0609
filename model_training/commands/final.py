"""`final`: the deployable teacher and student, trained on every patient but a held-back calibration
slice, with a card of what they were trained on (see model_training/runs/final.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from model_training.commands._training import add_config_arguments, setup, teardown


def _fraction(text: str, *, zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.15, got {text!r}") from None
    if not (0 <= value < 0.5 if zero else 0 < value < 0.5):
        raise argparse.ArgumentTypeError(
            f"the fraction must be in {'[' if zero else '('}0, 0.5), got {value}"
        )
    return value


def _test_fraction(text: str) -> float:
    return _fraction(text, zero=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "final",
        help="train the deployable teacher + student on all patients; writes bundles and a card",
        description="Trains the config's teacher and then its student, distilled online, on every patient "
        "of the data except a held-back slice (by patient, stratified) that calibrates them, fits the safety "
        "gate's threshold and holds their golden images, and a test slice never trained or tuned on. "
        "Epochs: the config's, or those a cv run's report.json validated (--epochs-from). "
        "Writes DIR/teacher/, DIR/student/ (verified bundles), DIR/card.json and DIR/MODEL_CARD.md. Does "
        "nothing more when both bundles are complete; an interrupted run resumes.",
    )
    add_config_arguments(parser, fold=False)
    parser.add_argument(
        "--holdout",
        type=_fraction,
        default=0.15,
        help="fraction of the patients held back for calibration (default 0.15)",
    )
    parser.add_argument(
        "--test-fraction",
        type=_test_fraction,
        default=0.15,
        help="fraction of the patients set apart, never trained or tuned on: the held-out figures of the "
        "card and the safety gate (`gate-report`); 0 trains on them too (default 0.15)",
    )
    parser.add_argument(
        "--oof",
        type=Path,
        default=None,
        metavar="OOF_JSON",
        help="the oof.json of a cv run of this same config (`python -m model_training oof`): every patient "
        "trains, and the temperature and safety-gate threshold come from its out-of-fold predictions "
        "(--holdout and --test-fraction are then ignored)",
    )
    parser.add_argument(
        "--if-stale",
        choices=("retrain", "keep", "fail"),
        default="retrain",
        help="when DIR holds a model trained from another config, data, training code or evidence: train "
        "again (the old run moved to DIR.previous; default), keep serving it with a warning, or refuse "
        "(exit 2)",
    )
    parser.add_argument(
        "--card-doc",
        type=Path,
        default=None,
        metavar="MARKDOWN",
        help="also write the model card into this document's <!-- results:default_model:begin/end --> "
        "section (docs/MODEL_CARD.md)",
    )
    parser.add_argument(
        "--epochs-from",
        type=Path,
        default=None,
        metavar="REPORT_JSON",
        help="a cv run's report.json: train each model for the median epochs its folds exported",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.runs.final import run_final  # deferred: see commands/__init__.py

    config, context = setup(args)
    try:
        card = run_final(
            config,
            args.out,
            context,
            holdout=args.holdout,
            test=args.test_fraction,
            epochs_from=args.epochs_from,
            oof=args.oof,
            on_stale=args.if_stale,
        )
    finally:
        teardown(context)
    if card is not None:
        if args.card_doc is not None:
            from model_training.evaluation.publish import replace_section
            from model_training.runs.final import card_markdown

            body = card_markdown(card).replace("# Final model card\n\n", "", 1)
            args.card_doc.write_text(replace_section(args.card_doc.read_text(), "default_model", body))
        for role, model in card["models"].items():
            print(f"{role}: {model['bundle']} ({model['arch']}, {model['epochs']['epochs']} epochs)")
        print(f"card: {args.out / 'MODEL_CARD.md'}")
    return 0
