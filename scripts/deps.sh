#!/usr/bin/env bash
# Installs what the tests need on Debian/Ubuntu: PostgreSQL server binaries, redis-server, and the
# interpreters and toolchains the runtimes run (python3, node, go), and runc, the OCI runtime the
# standalone node agent runs runtime pods in.
# Idempotent and quick when everything is present; never starts or touches system services.
set -euo pipefail

missing=()
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null; then
  missing+=(postgresql)
fi
command -v redis-server >/dev/null || missing+=(redis-server)
command -v python3 >/dev/null || missing+=(python3)
command -v node >/dev/null || missing+=(nodejs)
command -v go >/dev/null || [[ -x /usr/lib/go/bin/go ]] || missing+=(golang-go)
command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || missing+=(runc)

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "deps: installing ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
if ! command -v apt-get >/dev/null; then
  echo "deps: no apt-get here; install ${missing[*]} with your package manager" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# policy-rc.d keeps the packages' own services from starting: the tests run private servers.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
