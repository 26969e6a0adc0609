#!/usr/bin/env bash
# `make test`'s system part: the programs the suite drives for real and a running PostgreSQL.
# Installs and starts what it may (as root, with apt); otherwise one line names the command to run.
#
#   promtool (prometheus)       the alert rules' and the Prometheus configuration's tests
#   docker-compose              the compose file's validation (no engine needed)
#   (shellcheck)                the shell scripts' lint
#   chromium, chromedriver      the clinician page's browser test
#   dciodvfy (dicom3tools)      the DICOM Structured Reports' validation
#   Orthanc (orthanc, orthanc-dicomweb)  the real PACS of the DICOM node's end-to-end tests
#   storescu, echoscu (dcmtk)   the modality that stores to that PACS
#   pg_ctlcluster (postgresql)  the database tests: PostgreSQL on 127.0.0.1:5432, user postgres, trust
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v Orthanc >/dev/null || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
command -v storescu >/dev/null || missing+=(dcmtk)

if [ ${#missing[@]} -gt 0 ]; then
    install="apt-get install -y --no-install-recommends ${missing[*]}"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "error: the tests need Debian packages that are missing: run 'sudo apt-get update && sudo $install'" >&2
        exit 1
    fi
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's prometheus package starts a daemon on :9090 where systemd runs; the tests start their own.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -n "${KDOCT_TEST_PG:-}" ]; then
    # Another server (kdoct_testing/postgres.py): the tests make their databases there; nothing to start.
    psql "$KDOCT_TEST_PG" -tAc 'select 1' >/dev/null || {
        echo "error: KDOCT_TEST_PG=$KDOCT_TEST_PG does not answer (psql \"\$KDOCT_TEST_PG\")" >&2
        exit 1
    }
    exit 0
fi

if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; then
    version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    start="pg_ctlcluster --skip-systemctl-redirect $version main start"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: PostgreSQL is not running on $PG_HOST:$PG_PORT: run 'sudo $start'" >&2
        exit 1
    fi
    $start
    for _ in $(seq 1 30); do pg_isready -h "$PG_HOST" -p "$PG_PORT" -q && break; sleep 1; done
    pg_isready -h "$PG_HOST" -p "$PG_PORT" -q || {
        echo "error: PostgreSQL did not start on $PG_HOST:$PG_PORT within 30 s ($start)" >&2
        exit 1
    }
fi

# The tests connect as postgres over TCP without a password and make throwaway databases from `test`.
if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    echo "error: cannot connect to PostgreSQL as postgres@$PG_HOST without a password: add" \
         "'host all all 127.0.0.1/32 trust' to pg_hba.conf (test machines only) and reload" >&2
    exit 1
fi
psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc "select 1 from pg_database where datname = 'test'" \
    | grep -q 1 || psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc 'create database test'
