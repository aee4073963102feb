#!/usr/bin/env bash
# `make cluster-test`: kubefaas on the real single-node cluster of cluster/. Starts the cluster
# when none runs (and removes it again at the end), builds every image here and imports it into
# the node's containerd, installs the chart with Helm and the values a user would pick
# (charts/kubefaas/values-cluster.yaml: tokens on, in-chart PostgreSQL and Redis), waits until
# every component is ready, then runs the end-to-end and differential tests of cluster/tests.
# Each phase prints how long it took.
#
# KUBEFAAS_CLUSTER_KEEP=1 keeps a cluster this script started (to look around afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=cluster/versions.env
source cluster/versions.env

release=kubefaas
system_namespace=kubefaas-system
function_namespace=kubefaas-e2e
export KUBECONFIG=$root/.cluster/kubeconfig

phase() {
  local name=$1 started=$SECONDS
  shift
  echo "cluster-test: $name"
  "$@"
  echo "cluster-test: $name took $((SECONDS - started)) s"
}

cluster_runs() {
  [[ -f $KUBECONFIG ]] && kubectl get --raw /readyz >/dev/null 2>&1
}

started_here=
if ! cluster_runs; then
  started_here=1
fi
teardown() {
  local status=$?
  if [[ -n $started_here && -z ${KUBEFAAS_CLUSTER_KEEP:-} ]]; then
    phase "cluster down" cluster/down.sh || status=1
  fi
  exit "$status"
}
trap teardown EXIT

phase "cluster up" cluster/up.sh
# kubectl of the cluster's own release (the system's may be outside the supported skew).
PATH=$(cluster/build.sh --print-bin-dir):$PATH
phase "cluster smoke checks" cluster/smoke.sh
# Release binaries built on the host go into the images (build-local.sh builds them).
phase "build the images" runtime-images/build-local.sh "$root/.cluster/images"
phase "load the images" cluster/load-images.sh "$root"/.cluster/images/*.tar
helm=$(cluster/build.sh helm)

install() {
  local upgrade=
  "$helm" status "$release" --namespace "$system_namespace" >/dev/null 2>&1 && upgrade=1
  # The tests' namespace starts empty: objects of an earlier run would answer for this one.
  kubectl delete namespace "$function_namespace" --ignore-not-found --wait=true --timeout=5m
  # Namespaces first, with Pod Security "restricted" enforced: every pod of the platform and
  # every runtime pod must pass it.
  kubectl apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $system_namespace
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
---
apiVersion: v1
kind: Namespace
metadata:
  name: $function_namespace
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
EOF
  "$helm" upgrade --install "$release" charts/kubefaas --namespace "$system_namespace" \
    --values charts/kubefaas/values-cluster.yaml --wait --timeout 10m
  if [[ -n $upgrade ]]; then
    # The images were rebuilt under the same tag: restart so the pods run what was just built.
    kubectl -n "$system_namespace" rollout restart deployment >/dev/null
    kubectl -n "$system_namespace" rollout restart statefulset >/dev/null
    kubectl -n "$system_namespace" rollout status deployment --timeout=5m
    kubectl -n "$system_namespace" rollout status statefulset --timeout=5m
  fi
}
phase "helm install, until every component is ready" install

export KUBEFAAS_RELEASE_NAMESPACE=$system_namespace KUBEFAAS_FULLNAME=$release \
  KUBEFAAS_FUNCTION_NAMESPACE=$function_namespace
# The differential test starts the standalone API server built next to it.
phase "build the tests" cargo build --locked -p kubefaas-standalone --bin kubefaas-apiserver
# Plain cargo test, one file at a time: faults.rs takes the platform down on purpose and must
# not run beside the others.
phase "end-to-end and differential tests" \
  cargo test --locked --no-fail-fast -p kubefaas-cluster-tests --test e2e --test differential
phase "fault tests" cargo test --locked -p kubefaas-cluster-tests --test faults
