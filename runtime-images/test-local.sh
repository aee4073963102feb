#!/usr/bin/env bash
# Checks images built by build-local.sh by running each once with podman, the way the chart
# runs them: non-root, read-only root file system, every capability dropped, no new privileges,
# writable paths only where the chart mounts volumes.
# - runtime-*: an echo function mounted read-only at /var/task; the watchdog must become healthy,
#   answer POST /invoke with the function's result, and exit 0 on SIGTERM.
# - operator, executor, api-gateway: the binary runs (--help) and the CA bundle is there.
# - watchdog: the image holds /kubefaas-watchdog.
# - postgresql: first start makes the cluster from POSTGRES_*; psql logs in over TCP with the
#   password (and not with a wrong one); a restart on the same data starts without initdb.
# - redis: started with the chart's arguments, PING answers PONG with the password, NOAUTH
#   without.
# - with KUBEFAAS_IMAGES_IMPORT_CHECK=1, also each archive of images.txt: a private containerd
#   (own socket, root and state, no CRI plugin; stopped afterwards) imports it with
#   `ctr -n k8s.io images import`, and the names it then lists must be exactly the references.
# Usage: runtime-images/test-local.sh [IMAGE_REFERENCE...]   (default: every image of
#   .cluster/images/images.txt). Uses the same private podman store as build-local.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source=runtime-images/podman-env.sh
source "$here/podman-env.sh"
standalone=${KUBEFAAS_IMAGES_STORE_LOCKED:-yes}
[[ $standalone == yes ]] || standalone=
kf_lock_store

list=${KUBEFAAS_IMAGES_DIR:-$root/.cluster/images}/images.txt
if (($# == 0)); then
  [[ -s $list ]] || { echo "test-local: no images given and no $list" >&2; exit 2; }
  mapfile -t refs < <(awk '{ print $1 }' "$list")
else
  refs=("$@")
fi

work=$(mktemp -d)
containers=()
containerd_pid=
cleanup() {
  for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  stop_containerd
  rm -rf "$work"
  if [[ -n $standalone ]]; then kf_release_store; fi
}
stop_containerd() {
  [[ -n $containerd_pid ]] || return 0
  kill "$containerd_pid" 2>/dev/null || true
  wait "$containerd_pid" 2>/dev/null || true
  containerd_pid=
}
trap cleanup EXIT

restricted=(--network host --read-only --read-only-tmpfs=false --cap-drop all --security-opt no-new-privileges "${kf_ulimits[@]}")

# A TCP port on 127.0.0.1 that nothing listens on (host networking: no port mapping).
free_port() {
  local port
  for _ in $(seq 50); do
    # Below the kernel's ephemeral range (32768+ by default): a port held by the local end of
    # an outgoing connection refuses a connect yet cannot be bound (seen: EADDRINUSE in CI).
    port=$((10000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "test-local: no free port found" >&2
  return 1
}

fail() {
  echo "FAIL $current: $*" >&2
  if [[ -n ${container:-} ]]; then
    echo "--- logs of $container" >&2
    podman logs "$container" 2>&1 | tail -40 >&2 || true
  fi
  exit 1
}

start() { # name, then podman run arguments
  local name=$1
  shift
  container=$(podman run -d --name "kf-test-$$-$name" "${restricted[@]}" "$@")
  containers+=("$container")
}

running() { [[ $(podman inspect --format '{{.State.Running}}' "$container" 2>/dev/null) == true ]]; }

# Polls `$@` until it succeeds, at most $1 seconds, failing early if the container exits.
wait_for() {
  local bound=$1 deadline
  shift
  deadline=$((SECONDS + bound))
  until "$@" >/dev/null 2>&1; do
    running || fail "the container exited: $(podman inspect --format '{{.State.ExitCode}}' "$container")"
    ((SECONDS < deadline)) || fail "not ready within ${bound}s: $*"
    sleep 0.5
  done
}

non_root() {
  local user
  user=$(podman image inspect --format '{{.Config.User}}' "$1")
  [[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || fail "runs as '${user:-root}'"
  echo "$user"
}

check_runtime() { # ref language
  local ref=$1 language=$2 code=$work/code-$2-$RANDOM port handler response stop_started
  mkdir -p "$code"
  case $language in
    python)
      handler=main.handler
      cat >"$code/main.py" <<'EOF'
import platform


def handler(event, context):
    print("log line from python")
    return {"echo": event, "version": platform.python_version(), "function": context.function_name}
EOF
      ;;
    nodejs)
      handler=index.handler
      cat >"$code/index.mjs" <<'EOF'
export const handler = async (event, context) => {
  console.log("log line from nodejs");
  return { echo: event, version: process.version, function: context.functionName };
};
EOF
      ;;
    go)
      handler=Handle
      cat >"$code/main.go" <<'EOF'
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
)

func Handle(ctx context.Context, event json.RawMessage) (any, error) {
	fmt.Println("log line from go")
	return map[string]any{"echo": event, "version": runtime.Version()}, nil
}
EOF
      ;;
  esac
  chmod -R a+rX "$code"
  port=$(free_port)
  start "$language-$port" --tmpfs /tmp:rw,mode=1777,size=256m -v "$code:/var/task:ro" \
    -e KUBEFAAS_HANDLER="$handler" -e KUBEFAAS_LISTEN="127.0.0.1:$port" \
    -e KUBEFAAS_FUNCTION_NAME=check -e GREETING=hello "$ref"
  # /tmp as the runtime pods have it (an emptyDir of 256Mi). Go compiles the function (and,
  # with an empty cache, the standard library) before listening.
  local started=$SECONDS
  wait_for 600 curl -fsS --max-time 2 "http://127.0.0.1:$port/healthz"
  echo "  healthy after $((SECONDS - started))s"
  response=$(curl -fsS --max-time 60 -H 'content-type: application/json' \
    -d '{"id": "check-1", "payload": {"n": 41}}' "http://127.0.0.1:$port/invoke") ||
    fail "POST /invoke failed"
  [[ $response == *'"result":'* && $response == *'"n":41'* && $response == *"log line from $language"* ]] ||
    fail "unexpected answer: $response"
  echo "  invoke: $(grep -o '"version":"[^"]*"' <<<"$response"), $(grep -o '"durationMs":[0-9]*' <<<"$response")"
  stop_started=$SECONDS
  podman stop -t 20 "$container" >/dev/null
  [[ $(podman inspect --format '{{.State.ExitCode}}' "$container") == 0 ]] ||
    fail "exit code $(podman inspect --format '{{.State.ExitCode}}' "$container") after SIGTERM"
  echo "  SIGTERM: exited 0 after $((SECONDS - stop_started))s"
}

check_platform() { # ref binary
  local ref=$1 binary=$2
  podman run --rm "${restricted[@]}" "$ref" --help >"$work/help" 2>&1 || fail "$binary --help: $(tail -5 "$work/help")"
  echo "  --help: $(head -1 "$work/help")"
  podman run --rm "${restricted[@]}" --entrypoint /usr/bin/test "$ref" -s /etc/ssl/certs/ca-certificates.crt ||
    fail "no CA bundle"
}

check_watchdog() {
  local c
  c=$(podman create "$1" /kubefaas-watchdog)
  containers+=("$c")
  podman cp "$c:/kubefaas-watchdog" "$work/kubefaas-watchdog"
  [[ -x $work/kubefaas-watchdog ]] || fail "no /kubefaas-watchdog"
  echo "  /kubefaas-watchdog: $(($(stat -c %s "$work/kubefaas-watchdog") / 1000000)) MB"
}

check_postgresql() {
  local ref=$1 port data=$work/pgdata password=Secret123 run_pg psql_tcp
  port=$(free_port)
  # Host directories as the chart's emptyDirs: world-writable, owned by root (podman's tmpfs
  # mounts would take the image directory's mode without its owner).
  mkdir -p "$data" "$work/pgrun" && chmod 0777 "$data" "$work/pgrun"
  run_pg() {
    start "postgresql-$1" --user 70:70 -v "$work/pgrun:/var/run/postgresql" \
      --tmpfs /tmp:rw,mode=1777 -v "$data:/var/lib/postgresql/data" \
      -e POSTGRES_DB=kubefaas -e POSTGRES_USER=kubefaas -e POSTGRES_PASSWORD="$password" \
      -e PGDATA=/var/lib/postgresql/data/pgdata "$ref" -c port="$port"
  }
  psql_tcp() { # password, then psql arguments
    local pw=$1
    shift
    podman exec -e PGPASSWORD="$pw" "$container" psql -X -At -v ON_ERROR_STOP=1 \
      "host=127.0.0.1 port=$port user=kubefaas dbname=kubefaas" "$@"
  }
  run_pg first
  wait_for 120 podman exec "$container" pg_isready -h 127.0.0.1 -p "$port" -U kubefaas -d kubefaas
  psql_tcp "$password" -c 'CREATE TABLE t (x int); INSERT INTO t VALUES (42);' >/dev/null ||
    fail "psql with the password"
  echo "  psql: $(psql_tcp "$password" -c 'SELECT version()' | cut -d' ' -f1-2), as $(psql_tcp "$password" -c 'SELECT current_user')"
  if psql_tcp wrong -c 'SELECT 1' >/dev/null 2>&1; then fail "a wrong password was accepted"; fi
  podman stop -t 20 "$container" >/dev/null
  [[ $(podman inspect --format '{{.State.ExitCode}}' "$container") == 0 ]] || fail "exit code after SIGINT"
  run_pg second
  wait_for 120 podman exec "$container" pg_isready -h 127.0.0.1 -p "$port" -U kubefaas -d kubefaas
  [[ $(psql_tcp "$password" -c 'SELECT x FROM t') == 42 ]] || fail "data lost across a restart"
  podman logs "$container" 2>&1 | grep -q 'made the cluster' && fail "initdb ran again on existing data"
  echo "  restart on the same data: kept"
}

check_redis() {
  local ref=$1 port answer
  port=$(free_port)
  mkdir -p "$work/redis" && chmod 0777 "$work/redis"
  start "redis-$port" --user 999:1000 -v "$work/redis:/data" -e REDIS_PASSWORD=Secret123 \
    "$ref" redis-server --requirepass Secret123 --dir /data --save '' --appendonly no --port "$port"
  wait_for 60 podman exec "$container" sh -c "redis-cli -p $port -a \"\$REDIS_PASSWORD\" --no-auth-warning ping | grep -q PONG"
  answer=$(podman exec "$container" redis-cli -p "$port" ping 2>&1 || true)
  [[ $answer == *NOAUTH* ]] || fail "PING without the password answered: $answer"
  echo "  ping: PONG with the password, '$answer' without; $(podman exec "$container" redis-server --version | cut -d' ' -f1-3)"
}

for ref in "${refs[@]}"; do
  current=$ref container=
  name=${ref##*/}
  name=${name%%:*}
  echo "-- $ref"
  [[ $name == watchdog ]] || echo "  user: $(non_root "$ref")"
  case $name in
    runtime-*) check_runtime "$ref" "${name#runtime-}" ;;
    operator | executor | api-gateway) check_platform "$ref" "kubefaas-$name" ;;
    watchdog) check_watchdog "$ref" ;;
    postgresql) check_postgresql "$ref" ;;
    redis) check_redis "$ref" ;;
    *) fail "no check for $name" ;;
  esac
  echo "  ok"
done

check_imports() {
  local dir=$work/containerd sock ref file names deadline
  current="archives of $list" container=
  sock=$dir/containerd.sock
  [[ -n $work && -d $work ]] || fail "no work directory"
  mkdir -p "$dir"
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
TOML
  containerd --config "$dir/config.toml" >"$dir/log" 2>&1 &
  containerd_pid=$!
  deadline=$((SECONDS + 60))
  until ctr --address "$sock" version >/dev/null 2>&1; do
    kill -0 "$containerd_pid" 2>/dev/null || fail "containerd exited: $(tail -5 "$dir/log")"
    ((SECONDS < deadline)) || fail "containerd did not answer within 60s"
    sleep 0.2
  done
  echo "-- import into a private containerd ($(containerd --version | cut -d' ' -f3))"
  while read -r ref file; do
    ctr --address "$sock" -n k8s.io images import "$file" >"$dir/import.log" 2>&1 ||
      fail "ctr import $file: $(tail -3 "$dir/import.log")"
    names=" $(ctr --address "$sock" -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
    [[ $names == *" $ref "* ]] || fail "$file imported as:$names"
    echo "  $file -> $ref"
  done <"$list"
  names=$(ctr --address "$sock" -n k8s.io images ls -q | grep -v '^sha256:' | sort)
  [[ $names == "$(awk '{ print $1 }' "$list" | sort)" ]] || fail "imported names: $names"
  stop_containerd
  echo "  ok: every archive imports as exactly its reference"
}

if [[ ${KUBEFAAS_IMAGES_IMPORT_CHECK:-0} == 1 ]]; then
  check_imports
fi
