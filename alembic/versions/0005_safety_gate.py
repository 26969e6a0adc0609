"""The safety gate's verdict on each prediction: gradable, gate_reason, ood_score (nullable: rows
written before this revision, or with the gate off, have none).

The hash chain covers these columns only when they hold a value (service/db/rows.py), so every row
written before this revision verifies unchanged. Columns are added and dropped in place (no table
copy), so the append-only triggers of 0002/0003 stay; dropping them would orphan the hashes of rows
that hold a verdict, which is why `db downgrade` below 0005 needs --allow-records-downgrade.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("gradable", sa.Boolean()),
    ("gate_reason", sa.String(length=64)),
    ("ood_score", sa.Float()),
)


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("predictions", sa.Column(name, kind, nullable=True))
    op.create_index(op.f("ix_predictions_gradable"), "predictions", ["gradable"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_predictions_gradable"), table_name="predictions")
    for name, _ in reversed(_COLUMNS):
        # SQLite >= 3.35 drops a column in place; the triggers on the table stay.
        op.execute(f"ALTER TABLE predictions DROP COLUMN {name}")
