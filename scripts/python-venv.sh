#!/usr/bin/env bash
# Makes the throwaway virtualenv the tests use and prints its python. Idempotent and quick once
# the venv has everything:
# - the official `kubernetes` Python client (the standalone API server's client tests);
# - helm-python-sdk, pinned: Helm's own Go code as a shared library inside the wheel (no download
#   at install time), which the chart tests lint and render the chart with (charts/tests/helm.py);
# - schemathesis, pinned: it fuzzes the gateway from its own /openapi.json and checks every
#   answer against the document (api-gateway/tests/openapi_conformance.rs).
#   scripts/python-venv.sh [DIR]   (default: .venv/tests under the repository)
set -euo pipefail

HELM_SDK_VERSION=0.2.2
SCHEMATHESIS_VERSION=4.32.5

venv=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.venv/tests"}
if ! "$venv/bin/python" -c 'import kubernetes' >/dev/null 2>&1; then
  echo "python-venv: installing the kubernetes client into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes
fi
if ! "$venv/bin/python" -c "import helm_python, sys; sys.exit(helm_python.__version__ != '$HELM_SDK_VERSION')" >/dev/null 2>&1; then
  echo "python-venv: installing helm-python-sdk $HELM_SDK_VERSION (the Helm SDK) into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "helm-python-sdk==$HELM_SDK_VERSION"
fi
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$SCHEMATHESIS_VERSION')" >/dev/null 2>&1; then
  echo "python-venv: installing schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
echo "$venv/bin/python"
