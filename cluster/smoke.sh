#!/usr/bin/env bash
# Checks that the running test cluster behaves like a real one, and exits
# non-zero at the first failure: the node is Ready; under Pod Security
# `restricted` a restricted pod runs and a privileged one is refused; memory
# limits are enforced (OOMKilled); a Service's ClusterIP reaches its pod from
# the host, from another pod and from the pod itself (hairpin); Service names
# resolve in pods; a ServiceAccount without RBAC gets 403 listing pods (from the
# host, and from a pod through the kubernetes Service); kubectl exec works
# (API server → kubelet); the namespace deletes. Leaves nothing behind.
# Env: SMOKE_TIMEOUT (seconds per wait, default 90).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
export PATH=$BIN_DIR:$PATH
[[ -f $KUBECONFIG_ADMIN ]] || die "no cluster (make cluster-up)"
export KUBECONFIG=$KUBECONFIG_ADMIN
NS=kubefaas-smoke
TIMEOUT=${SMOKE_TIMEOUT:-90}
started_at=$SECONDS

pass() { log "ok: $*"; }
fail() {
	log "FAILED: $*"
	kubectl -n "$NS" get pods -o wide >&2 2>/dev/null || true
	exit 1
}

[[ $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]] ||
	fail "node $NODE_NAME is not Ready"
pass "node $NODE_NAME Ready ($(kubectl get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion}'))"

if ! ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qxF "$NETCHECK_IMAGE"; then
	"$CLUSTER_DIR/build.sh" netcheck
	"$CLUSTER_DIR/load-images.sh" "$IMAGE_DIR/netcheck-$NETCHECK_VERSION.tar" >/dev/null
fi

cleanup() { kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT
if kubectl get namespace "$NS" >/dev/null 2>&1; then
	kubectl delete namespace "$NS" --timeout "${TIMEOUT}s" >/dev/null
fi

# A restricted securityContext, as Pod Security `restricted` demands.
restricted='{"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}'
container_sc='{"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true}'
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody, namespace: $NS}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: $NS
  labels: {app: server}
spec:
  securityContext: $restricted
  containers:
  - name: server
    image: $NETCHECK_IMAGE
    imagePullPolicy: Never
    args: [serve, ":8080"]
    ports: [{containerPort: 8080, name: http}]
    readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
    securityContext: $container_sc
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: $NS}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: http}]
EOF
kubectl -n "$NS" wait --for=condition=Ready pod/server --timeout "${TIMEOUT}s" >/dev/null ||
	fail "the restricted pod did not become Ready"
pass "restricted pod runs under enforce=restricted"

# A privileged pod in the same namespace: refused by PodSecurity admission.
if out=$(kubectl apply -f - 2>&1 <<EOF
apiVersion: v1
kind: Pod
metadata: {name: privileged, namespace: $NS}
spec:
  containers:
  - name: c
    image: $PAUSE_IMAGE
    imagePullPolicy: Never
    securityContext: {privileged: true}
EOF
); then
	fail "a privileged pod was admitted under enforce=restricted"
fi
[[ $out == *'violates PodSecurity "restricted:latest"'* ]] || fail "the privileged pod was refused, but not by PodSecurity: $out"
pass "privileged pod refused by PodSecurity"

# Memory limits are enforced: a container that outgrows its limit is OOM-killed.
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: oom, namespace: $NS}
spec:
  restartPolicy: Never
  securityContext: $restricted
  containers:
  - name: oom
    image: $NETCHECK_IMAGE
    imagePullPolicy: Never
    args: [alloc, "256"]
    resources: {limits: {memory: 32Mi}}
    securityContext: $container_sc
EOF
kubectl -n "$NS" wait --for=jsonpath='{.status.containerStatuses[0].state.terminated.reason}'=OOMKilled pod/oom \
	--timeout "${TIMEOUT}s" >/dev/null ||
	fail "a container over its 32Mi memory limit was not OOM-killed: $(kubectl -n "$NS" get pod oom -o jsonpath='{.status.containerStatuses[0].state}')"
pass "a container over its memory limit is OOMKilled"

# ClusterIP from the host.
ip=$(kubectl -n "$NS" get service echo -o jsonpath='{.spec.clusterIP}')
wait_for "$TIMEOUT" "the Service's endpoints" bash -c \
	"kubectl -n $NS get endpointslices -l kubernetes.io/service-name=echo -o jsonpath='{.items[*].endpoints[*].conditions.ready}' | grep -q true"
wait_for 30 "http://$ip/ from the host" bash -c "curl -fsS --max-time 2 http://$ip/ | grep -q 'netcheck server'" ||
	fail "ClusterIP $ip does not answer from the host"
pass "ClusterIP $ip reaches the pod from the host"

# From another pod: by ClusterIP and by name (short, and fully qualified),
# plus names of the kubernetes Service; then the API through the kubernetes
# Service with a token whose ServiceAccount has no RBAC: 403.
client() { # NAME ARGS...
	local name=$1
	shift
	kubectl -n "$NS" run "$name" --image "$NETCHECK_IMAGE" --image-pull-policy Never --restart Never \
		--overrides "{\"apiVersion\": \"v1\", \"spec\": {\"serviceAccountName\": \"nobody\",
			\"securityContext\": $restricted,
			\"containers\": [{\"name\": \"$name\", \"image\": \"$NETCHECK_IMAGE\", \"imagePullPolicy\": \"Never\",
			\"args\": $(jq -cn '$ARGS.positional' --args "$@"), \"securityContext\": $container_sc}]}}" >/dev/null
	kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$name" --timeout "${TIMEOUT}s" >/dev/null ||
		fail "pod $name did not succeed: $(kubectl -n "$NS" logs "$name" 2>&1)"
	kubectl -n "$NS" logs "$name"
}
out=$(client get-ip get "http://$ip/")
[[ $out == *"netcheck server"* ]] || fail "pod → ClusterIP: $out"
pass "ClusterIP reaches the pod from another pod"
out=$(client resolve resolve echo "echo.$NS.svc.$CLUSTER_DOMAIN" kubernetes.default)
[[ $out == *"echo [$ip]"* && $out == *"kubernetes.default [$KUBERNETES_SERVICE_IP]"* ]] || fail "resolving Service names in a pod: $out"
pass "Service names resolve in a pod: $(echo "$out" | tr '\n' ';')"
out=$(client get-name get "http://echo.$NS/")
[[ $out == *"netcheck server"* ]] || fail "pod → Service by name: $out"
pass "a Service reaches its pod by name from another pod"
out=$(client api api "/api/v1/namespaces/$NS/pods")
[[ $out == 403 ]] || fail "a ServiceAccount without RBAC listing pods from a pod got $out, not 403"
pass "a ServiceAccount without RBAC gets 403 listing pods (from a pod, through the kubernetes Service)"

# The same from the host, with a token the API server issues.
token=$(kubectl -n "$NS" create token nobody --duration 10m)
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$PKI_DIR/ca.crt" -H "Authorization: Bearer $token" \
	"https://127.0.0.1:$APISERVER_PORT/api/v1/namespaces/$NS/pods")
[[ $code == 403 ]] || fail "a ServiceAccount without RBAC listing pods from the host got $code, not 403"
if kubectl --token "$token" --kubeconfig /dev/null --server "https://127.0.0.1:$APISERVER_PORT" \
	--certificate-authority "$PKI_DIR/ca.crt" -n "$NS" get pods >/dev/null 2>&1; then
	fail "kubectl with the no-RBAC token listed pods"
fi
pass "a ServiceAccount without RBAC gets 403 listing pods (from the host)"

# API server → kubelet: exec (and through it, the pod reaching itself through its Service).
out=$(kubectl -n "$NS" exec server -- /netcheck get "http://echo/" 2>&1) || fail "exec / hairpin: $out"
[[ $out == *"netcheck server"* ]] || fail "hairpin: $out"
pass "kubectl exec works, and the pod reaches itself through its Service (hairpin)"

# Namespace deletion (namespace controller, garbage collector) finishes.
trap - EXIT
kubectl delete namespace "$NS" --timeout "${TIMEOUT}s" >/dev/null || fail "namespace $NS was not deleted"
pass "namespace deleted"
log "smoke test passed in $((SECONDS - started_at))s"
