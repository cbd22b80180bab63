#!/usr/bin/env bash
# One-shot init job of the compose stack: the databases of MLflow, Airflow and the app-db on
# the stack's PostgreSQL, each owned by a login role of its own (safe to re-run).
#   create-databases.sh DB[:ROLE:PASSWORD_VARIABLE] ...
#   e.g. create-databases.sh mlflow:mlflow:MLFLOW_DB_PASSWORD airflow:airflow:AIRFLOW_DB_PASSWORD
# DB alone: a database owned by the connecting user. DB:ROLE:VAR: the role is created (or
# its password reset, which is how a password is rotated) with the password held in the
# environment variable VAR, owns the database, and is the only role besides superusers that
# may connect to it (CONNECT revoked from PUBLIC): a service whose credentials leak reaches
# its own database only. Passwords never appear on a command line: psql reads them from the
# environment (\getenv). Connection from the standard libpq variables (PGHOST, PGUSER, ...).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: create-databases.sh DB[:ROLE:PASSWORD_VARIABLE] ..." >&2; exit 2; }
name_ok() { [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; }
for spec in "$@"; do
    IFS=: read -r db role variable extra <<<"$spec"
    if ! name_ok "$db" || [ -n "${extra:-}" ]; then
        echo "invalid database name '$spec' (letters, digits and _ only; DB or DB:ROLE:PASSWORD_VARIABLE)" >&2
        exit 2
    fi
    if [ -n "${role:-}" ] && { ! name_ok "$role" || ! name_ok "${variable:-}"; }; then
        echo "invalid role spec '$spec' (DB:ROLE:PASSWORD_VARIABLE, letters, digits and _ only)" >&2
        exit 2
    fi
    if [ -n "${role:-}" ] && [ -z "${!variable:-}" ]; then
        echo "the password of role $role is empty: set $variable" >&2
        exit 2
    fi
done
for _ in $(seq 1 30); do pg_isready -q && break; sleep 1; done
sql() { psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
for spec in "$@"; do
    IFS=: read -r db role variable _ <<<"$spec"
    if [ -n "${role:-}" ]; then
        if [ "$(sql -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" = "1" ]; then
            verb="ALTER"; said="role $role password set"
        else
            verb="CREATE"; said="role $role created"
        fi
        sql <<SQL
\\getenv password $variable
$verb ROLE "$role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
SQL
        echo "$said"
    fi
    if [ "$(sql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" = "1" ]; then
        echo "database $db exists"
    else
        sql -c "CREATE DATABASE \"$db\""
        echo "database $db created"
    fi
    if [ -n "${role:-}" ]; then
        sql -c "ALTER DATABASE \"$db\" OWNER TO \"$role\"" -c "REVOKE CONNECT, TEMPORARY ON DATABASE \"$db\" FROM PUBLIC"
        # A stack created before roles per service: its tables were made by the superuser.
        # They become the service's (ALTER TABLE also covers views and sequences).
        psql -X -q -v ON_ERROR_STOP=1 -d "$db" -v role="$role" <<'SQL'
SELECT set_config('mlops.owner', :'role', false) \gset
DO $$
DECLARE item record;
BEGIN
  FOR item IN
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
      AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND pg_get_userbyid(c.relowner) <> current_setting('mlops.owner')
      AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
  LOOP
    EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', item.nspname, item.relname, current_setting('mlops.owner'));
  END LOOP;
  FOR item IN
    SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND t.typtype = 'e'
      AND pg_get_userbyid(t.typowner) <> current_setting('mlops.owner')
  LOOP
    EXECUTE format('ALTER TYPE %I.%I OWNER TO %I', item.nspname, item.typname, current_setting('mlops.owner'));
  END LOOP;
END $$;
SQL
        echo "database $db owned by $role, closed to other roles"
    fi
done
