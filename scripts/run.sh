#!/usr/bin/env bash
# `make run`: the whole platform on this machine, with the example functions deployed.
#
# Runs `kubefaas up` (control plane, operator, executor, gateway in one process) against the
# PostgreSQL/Redis in DATABASE_URL/REDIS_URL, or against throwaway ones started by
# scripts/with-services.sh, then applies examples/function*.yaml and waits until they are Ready.
# Ctrl-C stops everything. State lives in .kubefaas/ (kubeconfig at .kubefaas/kubeconfig).
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir=${KUBEFAAS_DATA_DIR:-.kubefaas}
kubefaas=${KUBEFAAS_BIN:-target/debug/kubefaas}

if [[ -z ${KUBEFAAS_RUN_INNER:-} ]]; then
  # Throwaway databases start empty, so objects kept from an earlier run would not match them.
  [[ -z ${DATABASE_URL:-} ]] && rm -rf "$data_dir/apiserver"
  export KUBEFAAS_RUN_INNER=1
  exec scripts/with-services.sh "$0" "$@"
fi

mkdir -p "$data_dir"
kubeconfig="$data_dir/kubeconfig"
rm -f "$kubeconfig"
"$kubefaas" up --data-dir "$data_dir" --kubeconfig "$kubeconfig" "$@" &
up=$!
stop() {
  kill -INT "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  exit 0
}
trap stop INT TERM

for ((i = 0; i < 300; i++)); do
  if [[ -s $kubeconfig ]] && kubectl --kubeconfig "$kubeconfig" get crd functions.kubefaas.io >/dev/null 2>&1; then
    break
  fi
  kill -0 "$up" 2>/dev/null || { echo "run: kubefaas up exited" >&2; exit 1; }
  sleep 0.2
done

for manifest in examples/function*.yaml; do
  kubectl --kubeconfig "$kubeconfig" apply -f "$manifest"
done
kubectl --kubeconfig "$kubeconfig" wait --for=jsonpath='{.status.phase}'=Ready functions --all --timeout=180s

cat <<MSG

The example functions are deployed. In another terminal:

  curl -s -X POST localhost:8080/functions/hello/invoke -H 'content-type: application/json' -d '{"name": "you"}'
  export KUBECONFIG=$PWD/$kubeconfig
  kubectl get functions
  kubectl apply -f examples/invocation.yaml
  kubectl wait --for=jsonpath='{.status.phase}'=Succeeded invocation/hello-once
  kubectl get invocation hello-once -o jsonpath='{.status.result}'

Ctrl-C here stops the platform.
MSG
wait "$up"
