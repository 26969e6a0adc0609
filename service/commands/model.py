"""`python -m service model promote|rollback|status|agreement`: the serving student's lifecycle
(docs/LIFECYCLE.md). Promotion and rollback append a chained model event (service/lifecycle/
promotion.py), which every worker of every replica switches to within KDOCT_MODEL_POLL_S; the service's
settings give the thresholds, the configured student and the audit key (KDOCT_* or .env)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from kdoct.errors import KdoctError
from service.audit_key import load_audit_key
from service.commands._database import add_database_option, open_engine
from service.config import load_settings
from service.db.model_ledgers import EventConflict, ModelEventRow, events
from service.lifecycle import promotion


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="shadow evidence, promotion and rollback of the student")
    commands = parser.add_subparsers(dest="model_command", required=True)
    promote = commands.add_parser(
        "promote",
        help="make the bundle the serving student on every worker, refused unless its shadow record meets "
        "KDOCT_PROMOTE_*; exit 1 when refused",
    )
    promote.add_argument("--bundle", type=Path, required=True, help="the candidate bundle's directory")
    promote.add_argument(
        "--sha256", default=None, help="refuse unless the bundle is this one (the sha256 that shadowed)"
    )
    rollback = commands.add_parser("rollback", help="return every worker to the student served before")
    status = commands.add_parser("status", help="the serving student and the model events, newest first")
    agreement = commands.add_parser(
        "agreement", help="a candidate's shadow record against the promotion thresholds, as JSON"
    )
    agreement.add_argument("sha256", help="the candidate bundle's sha256 (GET /models names it)")
    for command in (promote, rollback):
        command.add_argument(
            "--actor", default=None, help="who decides, for the record (default: cli:<login name>)"
        )
    for command in (promote, rollback, status, agreement):
        add_database_option(command)
    promote.set_defaults(handler=_promote)
    rollback.set_defaults(handler=_rollback)
    status.set_defaults(handler=_status)
    agreement.set_defaults(handler=_agreement)


def _settings(args: argparse.Namespace):
    overrides = {"database_url": args.database_url} if args.database_url else {}
    return load_settings(**overrides)


def _actor(args: argparse.Namespace) -> str:
    return args.actor or f"cli:{getpass.getuser()}"


def _describe(event: ModelEventRow) -> str:
    return (
        f"event {event.sequence} {event.created_at:%Y-%m-%d %H:%M:%S} {event.action} by {event.actor}: "
        f"{event.from_sha256[:12]} -> {event.to_name} {event.to_version} ({event.to_sha256[:12]}) "
        f"{event.to_path}"
    )


def _change(args: argparse.Namespace, change) -> int:
    settings = _settings(args)
    key = load_audit_key(settings.audit_key_file, create=False)
    with open_engine(args) as engine:
        try:
            event = change(engine, key, settings)
        except (promotion.LifecycleRefused, EventConflict) as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
    print(_describe(event))
    print(f"every worker switches within {settings.model_poll_s:g} s (GET /models shows what each serves)")
    return 0


def _promote(args: argparse.Namespace) -> int:
    def change(engine, key, settings):
        return promotion.promote(
            engine, key, args.bundle, actor=_actor(args),
            thresholds=promotion.Thresholds.from_settings(settings),
            configured=settings.student_bundle, expected_sha256=args.sha256,
        )  # fmt: skip

    return _change(args, change)


def _rollback(args: argparse.Namespace) -> int:
    def change(engine, key, settings):
        return promotion.rollback(engine, key, actor=_actor(args), configured=settings.student_bundle)

    return _change(args, change)


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with open_engine(args) as engine:
        current = promotion.serving(engine, settings.student_bundle)
        history = events(engine)
    print(f"serving {current.sha256} {current.path}")
    for event in history:
        print(_describe(event))
    return 0


def _agreement(args: argparse.Namespace) -> int:
    settings = _settings(args)
    thresholds = promotion.Thresholds.from_settings(settings)
    with open_engine(args) as engine:
        try:
            evidence = promotion.evidence_against_serving(
                engine, args.sha256, settings.student_bundle, thresholds
            )
        except KdoctError as exc:
            sys.exit(f"error: {exc}")
    print(json.dumps(evidence, indent=2))
    return 0
