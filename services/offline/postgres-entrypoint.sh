#!/usr/bin/env bash
# First start: initdb with the superuser and password from the environment (the password
# through a file, never argv), scram-sha-256 for TCP clients. Every start: run the server as
# the postgres user, listening on the container's addresses.
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
bin=/usr/lib/postgresql/15/bin
as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups)
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    "${as_postgres[@]}" "$bin/initdb" -D "$PGDATA" --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    db="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}"
    if [ "$db" != postgres ]; then
        "${as_postgres[@]}" "$bin/postgres" --single -D "$PGDATA" postgres <<<"CREATE DATABASE \"$db\";" >/dev/null
    fi
    echo "initialised $PGDATA for ${POSTGRES_USER:-postgres}"
fi
exec "${as_postgres[@]}" "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
