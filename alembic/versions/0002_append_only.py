"""Predictions are append-only: triggers refuse UPDATE, DELETE (and, on PostgreSQL, TRUNCATE).

An administrator who must repair data disables the trigger knowingly (ALTER TABLE predictions
DISABLE TRIGGER ...); `python -m service audit verify` then shows which rows no longer chain.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MESSAGE = "predictions are append-only"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION predictions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{_MESSAGE}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
            END;
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER predictions_no_update_delete BEFORE UPDATE OR DELETE ON predictions "
            "FOR EACH ROW EXECUTE FUNCTION predictions_append_only()"
        )
        op.execute(
            "CREATE TRIGGER predictions_no_truncate BEFORE TRUNCATE ON predictions "
            "FOR EACH STATEMENT EXECUTE FUNCTION predictions_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER predictions_no_{operation.lower()} BEFORE {operation} ON predictions "
                f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}: {operation} refused'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER predictions_no_truncate ON predictions")
        op.execute("DROP TRIGGER predictions_no_update_delete ON predictions")
        op.execute("DROP FUNCTION predictions_append_only()")
    else:
        op.execute("DROP TRIGGER predictions_no_update")
        op.execute("DROP TRIGGER predictions_no_delete")
