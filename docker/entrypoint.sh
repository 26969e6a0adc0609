#!/bin/sh
# Container entrypoint for the kdoct image.
#   serve (default)   wait for the database, check the schema is at head, then exec uvicorn with N
#                     workers; refused when the owner's URL is in the environment (below)
#   dicom-node        the DICOM node (C-STORE/C-ECHO SCP, its HTTP on KDOCT_DICOM_HTTP_PORT): the same
#                     checks as serve (owner's URL refused, database waited for, schema at head,
#                     metrics directory emptied), then exec `python -m service dicom-node`; it binds
#                     KDOCT_DICOM_HOST (0.0.0.0 here, like serve's KDOCT_HOST)
#   migrate           wait for the database and apply migrations as the owner, nothing else
#   db|apikey|audit   the service's own CLI, e.g. `docker compose run --rm admin apikey create ops --scopes read`
#   anything else     executed as given (a shell, python -m model_training ..., torchrun ...)
# The service's settings (KDOCT_*) pass through; serve gives uvicorn KDOCT_HOST (0.0.0.0 here: the
# container's port is the boundary), KDOCT_PORT (8000) and KDOCT_WORKERS (2). The entrypoint's own:
#   KDOCT_DB_WAIT_SECONDS (60), KDOCT_ALEMBIC_CONFIG (/app/alembic.ini), PROMETHEUS_MULTIPROC_DIR,
#   KDOCT_MIGRATION_DATABASE_URL: the tables' owner, for `migrate` and the CLI only (the one-shot
#   `migrate` and the `admin` services of docker-compose.yml, the Kubernetes Job). The server connects
#   with KDOCT_DATABASE_URL, a role that may only read and append (docs/SECURITY.md), and must never
#   hold the owner's URL: whatever is in a process's environment can be read from /proc/<pid>/environ
#   by anything that runs as the same user, so a compromised worker would have the owner's password.
set -eu

# docker compose cannot leave a variable out, only set it empty; an empty optional setting means
# "not set" (no teacher, default policy), which the service only understands when it is absent.
for optional in KDOCT_TEACHER_BUNDLE KDOCT_SECOND_OPINION KDOCT_DICOM_DESTINATION KDOCT_DICOMWEB_URL \
    KDOCT_SHADOW_BUNDLE KDOCT_PROMOTE_MIN_SHADOWED KDOCT_PROMOTE_MIN_AGREEMENT KDOCT_PROMOTE_MIN_SENSITIVITY \
    KDOCT_PROMOTE_MIN_FEEDBACK_PER_CLASS; do
    eval "value=\${$optional:-}"
    [ -n "$value" ] || unset "$optional"
done

here=$(dirname "$0")

# One-off commands keep their metrics in memory: importing the service with PROMETHEUS_MULTIPROC_DIR
# set fails while the directory is missing, and their files would be summed into the server's.
one_off() {
    (unset PROMETHEUS_MULTIPROC_DIR && "$@")
}

# Migrations and the CLI run as the owner when one is configured (else as KDOCT_DATABASE_URL).
# A subshell: the owner's URL must never stay behind in the shell that goes on to exec the server.
as_owner() {
    (
        # shellcheck disable=SC2030 # local to the subshell on purpose
        KDOCT_DATABASE_URL="${KDOCT_MIGRATION_DATABASE_URL:-${KDOCT_DATABASE_URL:-}}"
        export KDOCT_DATABASE_URL
        "$@"
    )
}

wait_and_migrate() {
    as_owner python "$here/wait_for_db.py" --timeout "${KDOCT_DB_WAIT_SECONDS:-60}"
    as_owner one_off alembic -c "${KDOCT_ALEMBIC_CONFIG:-/app/alembic.ini}" upgrade head
}

reset_metrics_dir() {
    # Multiprocess metric files from a previous run would be summed into the new one's: start empty.
    if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
        mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
        find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -type f -name '*.db' -delete
    fi
}

# The long-running servers (the API, the DICOM node) write records as the runtime role only.
refuse_owner_url() {
    if [ -n "${KDOCT_MIGRATION_DATABASE_URL:-}" ]; then
        echo "entrypoint: refusing to $1 with KDOCT_MIGRATION_DATABASE_URL (the tables' owner) in the" \
            "environment: the server must hold only the runtime role's KDOCT_DATABASE_URL. Run migrations" \
            "in their own one-shot container (docker compose: the migrate service; Kubernetes: the" \
            "migration Job) and remove the variable from the server's (docs/DEPLOYMENT.md)." >&2
        exit 2
    fi
}

command=${1:-serve}
[ "$#" -gt 0 ] && shift

case "$command" in
    serve)
        refuse_owner_url serve
        # As the runtime role: a no-op at head, and a failure before it (the role may not create
        # tables), so a worker never serves an old schema.
        wait_and_migrate
        reset_metrics_dir
        # exec: the server replaces this shell as the container's main process, so the SIGTERM of
        # `docker stop` reaches uvicorn, which drains in-flight requests instead of being killed.
        exec python -m service serve \
            --host "${KDOCT_HOST:-0.0.0.0}" \
            --port "${KDOCT_PORT:-8000}" \
            --workers "${KDOCT_WORKERS:-2}" \
            "$@"
        ;;
    dicom-node)
        refuse_owner_url "run the DICOM node"
        # As for serve: the node writes the same records, so it must not start on an old schema.
        wait_and_migrate
        reset_metrics_dir
        # The container's port is the boundary (only callers on KDOCT_DICOM_CALLERS may associate).
        KDOCT_DICOM_HOST="${KDOCT_DICOM_HOST:-0.0.0.0}"
        export KDOCT_DICOM_HOST
        # exec, as for serve: SIGTERM reaches the node, which finishes its associations and series.
        exec python -m service dicom-node "$@"
        ;;
    migrate)
        wait_and_migrate
        ;;
    db | apikey | audit | model | report)
        wait_and_migrate
        unset PROMETHEUS_MULTIPROC_DIR
        as_owner python -m service "$command" "$@"
        ;;
    *)
        exec "$command" "$@"
        ;;
esac
