"""The model lifecycle's ledgers: shadow_results (a candidate bundle's results on the live requests it
shadowed) and model_events (promotions and rollbacks of the serving student). Both append-only (the
runtime role may SELECT and INSERT) and hash-chained with the audit key (service/db/ledger.py).

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNTIME_ROLE = "kdoct_runtime"
_TABLES = ("shadow_results", "model_events")


def _chain_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _hash_columns() -> list[sa.Column]:
    return [
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "shadow_results",
        *_chain_columns(),
        sa.Column("prediction_id", sa.Uuid(), nullable=False),
        sa.Column("candidate_name", sa.String(length=128), nullable=False),
        sa.Column("candidate_version", sa.String(length=64), nullable=False),
        sa.Column("candidate_sha256", sa.String(length=64), nullable=False),
        sa.Column("current_sha256", sa.String(length=64), nullable=False),
        sa.Column("current_label", sa.String(length=32), nullable=False),
        sa.Column("current_gradable", sa.Boolean(), nullable=True),
        sa.Column("teacher_label", sa.String(length=32), nullable=True),
        sa.Column("candidate_label", sa.String(length=32), nullable=False),
        sa.Column("candidate_probabilities", sa.JSON(), nullable=False),
        sa.Column("candidate_confidence", sa.Float(), nullable=False),
        sa.Column("candidate_gradable", sa.Boolean(), nullable=True),
        sa.Column("candidate_reason", sa.String(length=64), nullable=True),
        *_hash_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_results")),
        sa.UniqueConstraint("sequence", name=op.f("uq_shadow_results_sequence")),
    )
    with op.batch_alter_table("shadow_results", schema=None) as batch_op:
        for column in ("created_at", "prediction_id", "candidate_sha256"):
            batch_op.create_index(batch_op.f(f"ix_shadow_results_{column}"), [column], unique=False)
    op.create_table(
        "model_events",
        *_chain_columns(),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("from_sha256", sa.String(length=64), nullable=False),
        sa.Column("from_path", sa.Text(), nullable=False),
        sa.Column("to_sha256", sa.String(length=64), nullable=False),
        sa.Column("to_name", sa.String(length=128), nullable=False),
        sa.Column("to_version", sa.String(length=64), nullable=False),
        sa.Column("to_path", sa.Text(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        *_hash_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_events")),
        sa.UniqueConstraint("sequence", name=op.f("uq_model_events_sequence")),
    )
    for table in _TABLES:
        _append_only(table)


def _append_only(table: str) -> None:
    message = f"{table} is append-only"
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"REVOKE ALL ON {table} FROM PUBLIC")
        op.execute(f"GRANT SELECT, INSERT ON {table} TO {RUNTIME_ROLE}")
        op.execute(
            f"""
            CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{message}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
            END;
            $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}: {operation} refused'); END"
            )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in reversed(_TABLES):
        if postgresql:
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
            op.execute(f"DROP TRIGGER {table}_no_update_delete ON {table}")
            op.execute(f"DROP FUNCTION {table}_append_only()")
        else:
            op.execute(f"DROP TRIGGER {table}_no_update")
            op.execute(f"DROP TRIGGER {table}_no_delete")
        op.drop_table(table)
