#!/usr/bin/env bash
# One-shot init job of the compose stack: create the databases of MLflow, Airflow and the
# app-db on the stack's PostgreSQL, each only if it does not exist yet (safe to re-run).
# Connection from the standard libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD);
# database names as arguments, e.g.  create-databases.sh mlflow airflow appdb
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: create-databases.sh DB [DB ...]" >&2; exit 2; }
for _ in $(seq 1 30); do pg_isready -q && break; sleep 1; done
for db in "$@"; do
    if ! [[ "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "invalid database name '$db' (letters, digits and _ only)" >&2
        exit 2
    fi
    exists=$(psql -X -v ON_ERROR_STOP=1 -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")
    if [ "$exists" = "1" ]; then
        echo "database $db exists"
    else
        psql -X -v ON_ERROR_STOP=1 -d postgres -qc "CREATE DATABASE \"$db\""
        echo "database $db created"
    fi
done
