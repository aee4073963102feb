#!/bin/sh
# Entrypoint of kubefaas's PostgreSQL image. On first start (no PG_VERSION in $PGDATA) makes a
# cluster whose superuser is $POSTGRES_USER (default postgres) with $POSTGRES_PASSWORD, and the
# database $POSTGRES_DB (default the user's name); then runs postgres listening on every address.
# TCP connections need the password (scram-sha-256); the unix socket, reachable only inside the
# container, is trusted. Arguments are more postgres options (`-c name=value`); a first argument
# that is not an option is run instead (`psql ...`).
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

: "${PGDATA:?PGDATA is not set}"
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "kubefaas-postgresql: POSTGRES_PASSWORD is empty; the first start needs it" >&2
    exit 1
  fi
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 \
    --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  trap - EXIT
  printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
    >>"$PGDATA/pg_hba.conf"
  if [ "$database" != postgres ]; then
    # Single-user mode: no server to start and wait for. Identifiers are quoted.
    quote() { printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"; }
    output=$(printf 'CREATE DATABASE %s OWNER %s;\n' "$(quote "$database")" "$(quote "$user")" |
      postgres --single -D "$PGDATA" postgres 2>&1)
    case $output in
      *ERROR*) printf '%s\n' "$output" >&2; exit 1 ;;
    esac
  fi
  echo "kubefaas-postgresql: made the cluster in $PGDATA (user $user, database $database)"
fi

# JIT is off: the image leaves LLVM out.
exec postgres -D "$PGDATA" -c listen_addresses='*' -c jit=off "$@"
