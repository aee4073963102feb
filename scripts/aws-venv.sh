#!/usr/bin/env bash
# Makes the throwaway virtualenv with boto3, AWS's own SDK, that the gateway's Lambda Invoke API
# is tested with (api-gateway/tests/lambda_api.rs), and prints its python. A venv of its own:
# botocore pins python-dateutil below the version the kubernetes client of .venv/tests needs.
#   scripts/aws-venv.sh [DIR]   (default: .venv/aws under the repository)
set -euo pipefail

venv=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.venv/aws"}
if ! "$venv/bin/python" -c 'import boto3' >/dev/null 2>&1; then
  echo "aws-venv: installing boto3 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check boto3
fi
echo "$venv/bin/python"
