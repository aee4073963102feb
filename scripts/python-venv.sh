#!/usr/bin/env bash
# Makes the throwaway virtualenv the client tests use (the official `kubernetes` Python client,
# from PyPI) and prints its python. Idempotent and quick once the venv exists.
#   scripts/python-venv.sh [DIR]   (default: .venv/tests under the repository)
set -euo pipefail

venv=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.venv/tests"}
if ! "$venv/bin/python" -c 'import kubernetes' >/dev/null 2>&1; then
  echo "python-venv: installing the kubernetes client into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes
fi
echo "$venv/bin/python"
