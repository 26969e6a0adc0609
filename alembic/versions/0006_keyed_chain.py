"""The keyed chain epoch: links of predictions from here on are HMAC-SHA256 under the audit key.

Until now a row's link was sha256(prev_hash + row), which anyone who may INSERT (the runtime role)
can compute: a forged row at the chain's end verified. From the epoch this revision opens, links are
keyed with a key derived from the audit key (service/db/chain.py), which the database never sees.

- predictions.link_rule names the rule a row claims. Existing rows get "sha256" and verify as before.
  On PostgreSQL the column then loses its default: a service older than this revision inserts
  without it and fails (its rows spool), so it cannot write unkeyed rows into the keyed epoch
  during a rolling upgrade. SQLite keeps the default (dropping it would copy the table and lose its
  triggers); there the service migrates its own store at start, so no older writer runs beside it.
- chain_epochs says from which sequence on the keyed rule holds: one row, the chain's next sequence
  at the moment of migrating (read under the chain's own lock, so no append slips between). The
  owner writes it; the runtime role may only SELECT it, and triggers refuse UPDATE and DELETE.

Columns are added in place (no table copy): the append-only triggers of 0002 stay, and the runtime
role's table-wide grants of 0003 cover the new column.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNTIME_ROLE = "kdoct_runtime"
# service/db/chain.py: UNKEYED_RULE, KEYED_RULE, CHAIN_LOCK_KEY (spelled out: a migration must not
# change meaning when the code it was written with changes).
_UNKEYED, _KEYED = "sha256", "hmac-sha256"
_CHAIN_LOCK_KEY = 0x6B646F6374
_MESSAGE = "chain epochs are append-only"


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    if postgresql:
        # Appends take this lock to read the last link; holding it to the end of the migration's
        # transaction means the epoch's first sequence is the one the next append gets.
        op.execute(sa.text(f"SELECT pg_advisory_xact_lock({_CHAIN_LOCK_KEY})"))
    op.add_column(
        "predictions",
        sa.Column("link_rule", sa.String(length=16), nullable=False, server_default=_UNKEYED),
    )
    if postgresql:
        op.alter_column("predictions", "link_rule", server_default=None)
    op.create_table(
        "chain_epochs",
        sa.Column("first_sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("first_sequence", name=op.f("pk_chain_epochs")),
    )
    op.execute(
        "INSERT INTO chain_epochs (first_sequence, rule, started_at) "
        f"SELECT coalesce(max(sequence), 0) + 1, '{_KEYED}', CURRENT_TIMESTAMP FROM predictions"
    )
    if postgresql:
        op.execute("REVOKE ALL ON chain_epochs FROM PUBLIC")
        op.execute(f"GRANT SELECT ON chain_epochs TO {RUNTIME_ROLE}")
        op.execute(
            f"""
            CREATE FUNCTION chain_epochs_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{_MESSAGE}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
            END;
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER chain_epochs_no_update_delete BEFORE UPDATE OR DELETE ON chain_epochs "
            "FOR EACH ROW EXECUTE FUNCTION chain_epochs_append_only()"
        )
        op.execute(
            "CREATE TRIGGER chain_epochs_no_truncate BEFORE TRUNCATE ON chain_epochs "
            "FOR EACH STATEMENT EXECUTE FUNCTION chain_epochs_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER chain_epochs_no_{operation.lower()} BEFORE {operation} ON chain_epochs "
                f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}: {operation} refused'); END"
            )


def downgrade() -> None:
    # Keyed rows cannot be verified by code older than this revision: `db downgrade` below 0006
    # needs --allow-records-downgrade (service/commands/db.py).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER chain_epochs_no_truncate ON chain_epochs")
        op.execute("DROP TRIGGER chain_epochs_no_update_delete ON chain_epochs")
        op.execute("DROP FUNCTION chain_epochs_append_only()")
    else:
        op.execute("DROP TRIGGER chain_epochs_no_update")
        op.execute("DROP TRIGGER chain_epochs_no_delete")
    op.drop_table("chain_epochs")
    # SQLite >= 3.35 drops a column in place; the triggers on the table stay.
    op.execute("ALTER TABLE predictions DROP COLUMN link_rule")
