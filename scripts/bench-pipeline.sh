#!/usr/bin/env bash
# `make bench`: measures the resource-driven pipeline on this machine.
#
# Starts `kubefaas up` (against throwaway PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set)
# and reports, as seen by a kubectl user:
#   - Function apply → Ready, for a fresh python function;
#   - Invocation apply → Succeeded, for N sequential invocations of it (warm after the first),
#     as p50/p90/max of the wall time from starting `kubectl apply` to `kubectl wait` returning
#     (two kubectl process starts included, about 0.1 s each).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${KUBEFAAS_BENCH_INNER:-} ]]; then
  export KUBEFAAS_BENCH_INNER=1
  exec scripts/with-services.sh "$0" "$@"
fi

n=${BENCH_INVOCATIONS:-20}
dir=$(mktemp -d -t kubefaas-bench.XXXXXX)
kubeconfig=$dir/kubeconfig
kubefaas=${KUBEFAAS_BIN:-target/release/kubefaas}
"$kubefaas" up --data-dir "$dir" --kubeconfig "$kubeconfig" --api-addr 127.0.0.1:0 --gateway-addr 127.0.0.1:0 \
  --queue-prefix "bench-$$" >"$dir/up.log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
k() { kubectl --kubeconfig "$kubeconfig" "$@"; }
for ((i = 0; i < 300; i++)); do
  [[ -s $kubeconfig ]] && k get crd invocations.kubefaas.io >/dev/null 2>&1 && break
  sleep 0.1
done

now() { date +%s.%N; }
start=$(now)
k apply -f examples/function.yaml >/dev/null
k wait --for=jsonpath='{.status.phase}'=Ready function/hello --timeout=120s >/dev/null
echo "function apply → Ready: $(awk -v a="$(now)" -v b="$start" 'BEGIN { printf "%.3f", a - b }') s"

times=()
for ((i = 0; i < n; i++)); do
  start=$(now)
  printf 'apiVersion: kubefaas.io/v1alpha1\nkind: Invocation\nmetadata:\n  name: bench-%d\nspec:\n  functionRef:\n    name: hello\n  payload:\n    name: bench\n' "$i" |
    k apply -f - >/dev/null
  k wait --for=jsonpath='{.status.phase}'=Succeeded "invocation/bench-$i" --timeout=120s >/dev/null
  times+=("$(awk -v a="$(now)" -v b="$start" 'BEGIN { printf "%.3f", a - b }')")
done
printf '%s\n' "${times[@]}" | sort -n | awk -v n="$n" '
  { t[NR] = $1 }
  END {
    printf "invocation apply → Succeeded over %d sequential invocations: p50 %.3f s, p90 %.3f s, max %.3f s (first, cold: see max)\n",
      n, t[int((n + 1) / 2)], t[int(n * 0.9 + 0.5)], t[n]
  }'
