#!/bin/sh
# Runs once, when the postgres container initialises an empty data directory: the login role the API
# uses at run time, a member of kdoct_runtime (SELECT and INSERT on the records only; the migrations,
# run as POSTGRES_USER, grant those). On an existing database run the same two statements by hand
# (docs/SECURITY.md). psql's :"name" and :'value' quote the variables, whatever they hold.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v runtime_user="$KDOCT_RUNTIME_DB_USER" -v runtime_password="$KDOCT_RUNTIME_DB_PASSWORD" <<'SQL'
CREATE ROLE kdoct_runtime NOLOGIN;
CREATE ROLE :"runtime_user" LOGIN PASSWORD :'runtime_password' IN ROLE kdoct_runtime;
SQL
