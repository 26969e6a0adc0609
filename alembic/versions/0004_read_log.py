"""Who read which prediction: the prediction_reads table (append-only, the runtime role may SELECT and
INSERT), and an index on predictions.request_id for lookups by the integrator's request id.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNTIME_ROLE = "kdoct_runtime"
_MESSAGE = "prediction reads are append-only"


def upgrade() -> None:
    op.create_table(
        "prediction_reads",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prediction_id", sa.Uuid(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"], ["predictions.id"], name=op.f("fk_prediction_reads_prediction_id_predictions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_reads")),
    )
    with op.batch_alter_table("prediction_reads", schema=None) as batch_op:
        for column in ("prediction_id", "read_at", "client_id"):
            batch_op.create_index(batch_op.f(f"ix_prediction_reads_{column}"), [column], unique=False)
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_predictions_request_id"), ["request_id"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute("REVOKE ALL ON prediction_reads FROM PUBLIC")
        op.execute(f"GRANT SELECT, INSERT ON prediction_reads TO {RUNTIME_ROLE}")
        op.execute(
            f"""
            CREATE FUNCTION prediction_reads_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{_MESSAGE}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
            END;
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER prediction_reads_no_update_delete BEFORE UPDATE OR DELETE ON prediction_reads "
            "FOR EACH ROW EXECUTE FUNCTION prediction_reads_append_only()"
        )
        op.execute(
            "CREATE TRIGGER prediction_reads_no_truncate BEFORE TRUNCATE ON prediction_reads "
            "FOR EACH STATEMENT EXECUTE FUNCTION prediction_reads_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER prediction_reads_no_{operation.lower()} BEFORE {operation} "
                f"ON prediction_reads BEGIN SELECT RAISE(ABORT, '{_MESSAGE}: {operation} refused'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER prediction_reads_no_truncate ON prediction_reads")
        op.execute("DROP TRIGGER prediction_reads_no_update_delete ON prediction_reads")
        op.execute("DROP FUNCTION prediction_reads_append_only()")
    else:
        op.execute("DROP TRIGGER prediction_reads_no_update")
        op.execute("DROP TRIGGER prediction_reads_no_delete")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_predictions_request_id"))
    op.drop_table("prediction_reads")
