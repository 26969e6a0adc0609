"""The service's runtime role may only read and append; feedback is append-only like predictions.

PostgreSQL: the migration (run by the tables' owner) creates the NOLOGIN group role `kdoct_runtime`
if it does not exist and grants it exactly what the service does at run time: SELECT and INSERT on
predictions and feedback, SELECT on api_clients (keys are created and revoked with the CLI, as the
owner) and on alembic_version. The service logs in as a role that is a member of it (docker compose
creates one; docs/SECURITY.md shows the SQL), never as the owner: only an owner or a superuser may
UPDATE, DELETE or TRUNCATE (beyond the triggers), ALTER the tables or DISABLE TRIGGER. A migration that
adds a table the service writes must grant it here too.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNTIME_ROLE = "kdoct_runtime"
_MESSAGE = "feedback is append-only"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            DO $$
            BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{RUNTIME_ROLE}') THEN
                    CREATE ROLE {RUNTIME_ROLE} NOLOGIN;
                END IF;
            END
            $$
            """
        )
        op.execute("REVOKE ALL ON predictions, feedback, api_clients, alembic_version FROM PUBLIC")
        op.execute(f"GRANT SELECT, INSERT ON predictions, feedback TO {RUNTIME_ROLE}")
        op.execute(f"GRANT SELECT ON api_clients, alembic_version TO {RUNTIME_ROLE}")
        op.execute(
            f"""
            CREATE FUNCTION feedback_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{_MESSAGE}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
            END;
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER feedback_no_update_delete BEFORE UPDATE OR DELETE ON feedback "
            "FOR EACH ROW EXECUTE FUNCTION feedback_append_only()"
        )
        op.execute(
            "CREATE TRIGGER feedback_no_truncate BEFORE TRUNCATE ON feedback "
            "FOR EACH STATEMENT EXECUTE FUNCTION feedback_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER feedback_no_{operation.lower()} BEFORE {operation} ON feedback "
                f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}: {operation} refused'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER feedback_no_truncate ON feedback")
        op.execute("DROP TRIGGER feedback_no_update_delete ON feedback")
        op.execute("DROP FUNCTION feedback_append_only()")
        op.execute(f"REVOKE ALL ON predictions, feedback, api_clients, alembic_version FROM {RUNTIME_ROLE}")
        # The role itself stays: login roles of running services may still be members of it.
    else:
        op.execute("DROP TRIGGER feedback_no_update")
        op.execute("DROP TRIGGER feedback_no_delete")
