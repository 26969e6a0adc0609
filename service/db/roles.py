"""Whether the service's database role could rewrite the audit log.

On PostgreSQL the service should log in as a member of `kdoct_runtime` (alembic/versions/0003, 0004):
SELECT and INSERT only. A role that owns the records tables or is a superuser can UPDATE, DELETE or
TRUNCATE them, ALTER them or DISABLE their append-only triggers, so a compromised service could
rewrite its own history; `KDOCT_DB_ROLE_CHECK=refuse` makes that a start-up error.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

__all__ = ["RECORD_TABLES", "audit_log_rewrite_powers"]

RECORD_TABLES = (
    "predictions",
    "feedback",
    "prediction_reads",
    "chain_epochs",
    "dicom_export_attempts",
    "shadow_results",
    "model_events",
)
_REWRITES = ("UPDATE", "DELETE", "TRUNCATE")
# Which privileges on a table amount to rewriting the records. chain_epochs (revision 0006) says from
# which sequence on links must be keyed: adding a row to it could declare unkeyed links valid again.
_REWRITING = {table: _REWRITES for table in RECORD_TABLES} | {"chain_epochs": ("INSERT", *_REWRITES)}


def audit_log_rewrite_powers(engine: Engine) -> list[str]:
    """What the connected role could do to rewrite records ([] for a proper runtime role, and on
    SQLite, which has no roles: its file's permissions are the control there)."""
    if engine.dialect.name != "postgresql":
        return []
    powers = []
    with engine.connect() as conn:
        if conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar():
            powers.append("superuser")
        for table in RECORD_TABLES:
            if conn.execute(text("SELECT to_regclass(:table)"), {"table": table}).scalar() is None:
                continue  # a table of a later revision than the database's
            owned = conn.execute(
                text("SELECT pg_has_role(current_user, tableowner, 'USAGE') FROM pg_tables "
                     "WHERE schemaname = current_schema() AND tablename = :table"),
                {"table": table},
            ).scalar()  # fmt: skip
            if owned:
                powers.append(f"owns {table}")
            for privilege in _REWRITING[table]:
                if conn.execute(
                    text("SELECT has_table_privilege(current_user, :table, :privilege)"),
                    {"table": table, "privilege": privilege},
                ).scalar():
                    powers.append(f"{privilege} on {table}")
    return powers
