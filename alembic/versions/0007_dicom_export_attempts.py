"""The DICOM node's delivery attempts: the dicom_export_attempts table (append-only; the runtime role
may SELECT and INSERT). One row per attempt to deliver one result object (SR or PDF) of a series, by
C-STORE or STOW-RS, and its outcome; no UID and no patient attribute, the series is named by its
headline prediction's id.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNTIME_ROLE = "kdoct_runtime"
_MESSAGE = "dicom export attempts are append-only"


def upgrade() -> None:
    op.create_table(
        "dicom_export_attempts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prediction_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dicom_export_attempts")),
    )
    with op.batch_alter_table("dicom_export_attempts", schema=None) as batch_op:
        for column in ("prediction_id", "created_at"):
            batch_op.create_index(batch_op.f(f"ix_dicom_export_attempts_{column}"), [column], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute("REVOKE ALL ON dicom_export_attempts FROM PUBLIC")
        op.execute(f"GRANT SELECT, INSERT ON dicom_export_attempts TO {RUNTIME_ROLE}")
        op.execute(
            f"""
            CREATE FUNCTION dicom_export_attempts_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{_MESSAGE}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
            END;
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER dicom_export_attempts_no_update_delete BEFORE UPDATE OR DELETE "
            "ON dicom_export_attempts FOR EACH ROW EXECUTE FUNCTION dicom_export_attempts_append_only()"
        )
        op.execute(
            "CREATE TRIGGER dicom_export_attempts_no_truncate BEFORE TRUNCATE ON dicom_export_attempts "
            "FOR EACH STATEMENT EXECUTE FUNCTION dicom_export_attempts_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER dicom_export_attempts_no_{operation.lower()} BEFORE {operation} "
                f"ON dicom_export_attempts BEGIN SELECT RAISE(ABORT, '{_MESSAGE}: {operation} refused'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER dicom_export_attempts_no_truncate ON dicom_export_attempts")
        op.execute("DROP TRIGGER dicom_export_attempts_no_update_delete ON dicom_export_attempts")
        op.execute("DROP FUNCTION dicom_export_attempts_append_only()")
    else:
        op.execute("DROP TRIGGER dicom_export_attempts_no_update")
        op.execute("DROP TRIGGER dicom_export_attempts_no_delete")
    op.drop_table("dicom_export_attempts")
