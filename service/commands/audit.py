"""`python -m service audit verify`: check the predictions hash chain and its checkpoints. The audit key
file is needed for both: the links from revision 0006 on are keyed with it, and it signed the
checkpoints. Without it (only with --no-checkpoints) the keyed links are reported as not verified,
never as intact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from kdoct.errors import ConfigError
from service.audit_key import DEFAULT_AUDIT_KEY_FILE, load_audit_key
from service.commands._database import add_database_option, open_engine
from service.db.anchor import DEFAULT_ANCHOR_FILE, read_checkpoints
from service.db.audit import verify
from service.db.ledger import LEDGERS, verify_ledger


class _AuditFiles(BaseSettings):
    """The service's KDOCT_AUDIT_KEY_FILE and KDOCT_ANCHOR_FILE, without the rest of its settings."""

    model_config = SettingsConfigDict(env_prefix="KDOCT_", env_file=".env", extra="ignore")
    audit_key_file: Path = DEFAULT_AUDIT_KEY_FILE
    anchor_file: Path = DEFAULT_ANCHOR_FILE


def register(subparsers) -> None:
    parser = subparsers.add_parser("audit", help="check the prediction records")
    commands = parser.add_subparsers(dest="audit_command", required=True)
    check = commands.add_parser(
        "verify",
        help="verify the hash chain (its keyed links need the audit key) and the checkpoints of its head; "
        "exit 1 at the first broken link or when links could not be verified",
    )
    add_database_option(check)
    check.add_argument(
        "--anchor-file", type=Path, default=None,
        help=f"the service's chain checkpoints (default: KDOCT_ANCHOR_FILE, else {DEFAULT_ANCHOR_FILE})",
    )  # fmt: skip
    check.add_argument(
        "--audit-key-file", type=Path, default=None,
        help="the key that keyed the links and signed the checkpoints, best a copy kept away from the "
        f"service's host (default: KDOCT_AUDIT_KEY_FILE, else {DEFAULT_AUDIT_KEY_FILE})",
    )  # fmt: skip
    check.add_argument(
        "--no-checkpoints", action="store_true",
        help="check the chain only; a chain cut short at its end then goes unnoticed",
    )  # fmt: skip
    check.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    files = _AuditFiles()
    key_file = args.audit_key_file or files.audit_key_file
    try:
        key = load_audit_key(key_file, create=False)
    except ConfigError as exc:
        if args.audit_key_file is not None or not args.no_checkpoints:
            sys.exit(f"error: {exc}; pass --audit-key-file, or --no-checkpoints to check the chain only")
        # The chain only, without its key: the unkeyed links are checked, the keyed ones reported
        # as not verified (the exit status is 1 when there are any).
        print(f"no audit key ({exc}): keyed links cannot be verified")
        key = None
    checkpoints, problems = [], []
    if not args.no_checkpoints:
        assert key is not None
        anchor_file = args.anchor_file or files.anchor_file
        try:
            found = read_checkpoints(anchor_file, key)
        except FileNotFoundError:
            sys.exit(
                f"error: no checkpoint file {anchor_file}: pass --anchor-file (KDOCT_ANCHOR_FILE of the "
                f"service), or --no-checkpoints to check the chain only"
            )
        except OSError as exc:
            sys.exit(f"error: checkpoint file {anchor_file} cannot be read: {exc}")
        checkpoints, problems = found.checkpoints, found.problems
        for problem in problems:
            print(f"BAD CHECKPOINT {anchor_file} {problem}")
    with open_engine(args) as engine:
        report = verify(engine, checkpoints, key=key)
    anchored = f", {report.checkpoints_checked} checkpoints matched" if not args.no_checkpoints else ""
    if report.broken is not None:
        broken = report.broken
        where = f"sequence {broken.sequence}"
        if broken.prediction_id is not None:
            where += f" (prediction {broken.prediction_id})"
        intact = f"{report.rows_checked} records before it are intact"
        if report.unverified:
            intact += f", {report.unverified} keyed links before it not verified (no audit key)"
        print(f"BROKEN at {where}: {broken.reason}; {intact}{anchored}")
        return 1
    if report.unverified:
        print(
            f"NOT VERIFIED from sequence {report.first_unverified}: {report.unverified} links are keyed with "
            f"the audit key, which this check lacks (pass --audit-key-file); {report.rows_checked} "
            "unkeyed records intact"
        )
        return 1
    print(f"ok: {report.rows_checked} prediction records, chain intact{anchored}")
    return 1 if problems or not _verify_ledgers(args, key) else 0


def _verify_ledgers(args: argparse.Namespace, key) -> bool:
    """The model lifecycle's ledgers (shadow results, model events): keyed from their first row."""
    if key is None:
        print("NOT VERIFIED: the shadow_results and model_events ledgers are keyed with the audit key")
        return False
    intact = True
    with open_engine(args) as engine:
        for item in LEDGERS:
            found = verify_ledger(engine, item, key)
            if found.ok:
                print(f"ok: {found.rows_checked} {found.name} rows, chain intact")
            else:
                intact = False
                print(
                    f"BROKEN {found.name} at sequence {found.broken_at}: {found.reason}; "
                    f"{found.rows_checked} rows before it are intact"
                )
    return intact
