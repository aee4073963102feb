#!/usr/bin/env bash
# Runs a command with DATABASE_URL and REDIS_URL pointing at real servers.
#
# When a variable is already set, that server is used as is. Otherwise a throwaway server is
# started on a free loopback port under a private temporary directory and stopped (and its data
# removed) when the command ends, however it ends. System services are never touched.
# PostgreSQL runs without fsync unless KUBEFAAS_PG_DURABLE=1.
set -euo pipefail

work=$(mktemp -d -t kubefaas-services.XXXXXX)
chmod 0755 "$work"
pg_bin=""
redis_pid=""

cleanup() {
  local rc=$?
  if [[ -n $pg_bin && -d $work/pg ]]; then
    as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [[ -n $redis_pid ]]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# initdb refuses to run as root; use the postgres system user then (the Debian package makes it).
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

wait_for() { # description, attempts, command...
  local what=$1 tries=$2
  shift 2
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "with-services: $what did not come up" >&2
  return 1
}

if [[ -z ${DATABASE_URL:-} ]]; then
  pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)")
  [[ -x $pg_bin/initdb ]] || pg_bin=$(dirname "$(command -v initdb)")
  [[ -x $pg_bin/initdb ]] || { echo "with-services: no PostgreSQL server binaries; run 'make deps'" >&2; exit 1; }
  port=$(free_port)
  mkdir -p "$work/pg" "$work/pgsock"
  [[ $(id -u) -eq 0 ]] && chown postgres "$work/pg" "$work/pgsock"
  as_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 --no-sync >"$work/initdb.log" 2>&1 ||
    { cat "$work/initdb.log" >&2; exit 1; }
  # Tests trade durability for speed; KUBEFAAS_PG_DURABLE=1 (make bench) keeps PostgreSQL's
  # defaults, so measurements pay for the WAL flushes a real installation pays for.
  relaxed="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [[ ${KUBEFAAS_PG_DURABLE:-} == 1 ]] && relaxed=""
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w -t 30 \
    -o "-p $port -k $work/pgsock -c listen_addresses=127.0.0.1 $relaxed -c max_connections=400" \
    start >/dev/null || { cat "$work/pg/server.log" >&2; exit 1; }
  "$pg_bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'CREATE DATABASE kubefaas' >/dev/null
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/kubefaas"
  echo "with-services: PostgreSQL on 127.0.0.1:$port" >&2
fi

if [[ -z ${REDIS_URL:-} ]]; then
  command -v redis-server >/dev/null || { echo "with-services: no redis-server; run 'make deps'" >&2; exit 1; }
  port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$port" --dir "$work" --save '' --appendonly no \
    --logfile "$work/redis.log" >/dev/null &
  redis_pid=$!
  wait_for "redis-server" 100 redis-cli -p "$port" ping
  export REDIS_URL="redis://127.0.0.1:$port"
  echo "with-services: Redis on 127.0.0.1:$port" >&2
fi

"$@"
