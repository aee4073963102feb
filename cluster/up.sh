#!/usr/bin/env bash
# Starts the single-node test cluster (make cluster-up): etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy and
# CoreDNS, all on private paths (.cluster/) and ports (cluster/versions.env),
# as root, without touching the host's own services or containerd. Returns once
# the node is Ready and DNS answers; the admin kubeconfig is .cluster/kubeconfig.
# Idempotent: components already running are left alone.
# Env: HOST_IP (default: the address of the default route's interface),
#      UP_TIMEOUT (seconds per wait, default 120).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
started_at=$SECONDS
UP_TIMEOUT=${UP_TIMEOUT:-120}

# --- what it needs -----------------------------------------------------------
"$CLUSTER_DIR/build.sh"
export PATH=$BIN_DIR:$PATH
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}
need_commands containerd:containerd containerd-shim-runc-v2:containerd ctr:containerd runc:runc \
	iptables:iptables ip6tables:iptables conntrack:conntrack ip:iproute2 openssl:openssl jq:jq curl:curl \
	"$CNI_BIN_DIR/bridge:containernetworking-plugins" "$CNI_BIN_DIR/host-local:containernetworking-plugins" \
	"$CNI_BIN_DIR/loopback:containernetworking-plugins"
[[ -d /sys/fs/cgroup/memory || -f /sys/fs/cgroup/cgroup.controllers ]] || die "no cgroup hierarchy mounted"
[[ -d /proc/sys/net/bridge ]] || modprobe br_netfilter || die "br_netfilter is not available (bridged pod traffic must pass iptables)"
grep -qw overlay /proc/filesystems || modprobe overlay || die "overlayfs is not available"

if [[ -z ${HOST_IP:-} ]]; then
	dev=$(ip -4 -o route show default | awk '{print $5; exit}')
	[[ -n $dev ]] || die "no default route; set HOST_IP to the address the node should advertise"
	HOST_IP=$(ip -4 -o addr show dev "$dev" scope global | awk '{sub(/\/.*/, "", $4); print $4; exit}')
	[[ -n $HOST_IP ]] || die "no IPv4 address on $dev; set HOST_IP"
fi

mkdir -p "$STATE_DIR" "$PKI_DIR" "$LOG_DIR" "$RUN_DIR"

# --- already up? ---------------------------------------------------------------
node_ready() {
	[[ $(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
all_running=1 any_running=0
for c in "${COMPONENTS[@]}"; do
	if running "$c"; then any_running=1; else all_running=0; fi
done
if ((all_running)) && [[ -f $KUBECONFIG_ADMIN ]] && node_ready; then
	log "already running (node $NODE_NAME Ready); kubeconfig: $KUBECONFIG_ADMIN"
	exit 0
fi
if ((!any_running)); then
	# A fresh start: keep the previous run's logs one generation.
	if [[ -n $(ls -A "$LOG_DIR" 2>/dev/null) ]]; then
		rm -rf "$STATE_DIR/logs.prev" && mv "$LOG_DIR" "$STATE_DIR/logs.prev" && mkdir -p "$LOG_DIR"
	fi
	# Refuse to share the host with another Kubernetes node or a clashing route.
	if iptables -t nat -S 2>/dev/null | grep -q -- '-N KUBE-'; then
		die "iptables already has KUBE-* chains: another Kubernetes (or a cluster that was not taken down: run cluster/down.sh)"
	fi
fi
# What the host had before the first component started, for down.sh.
if [[ ! -f $RUN_DIR/host.before ]]; then
	{
		for path in "${HOST_PATHS[@]}"; do [[ -e $path ]] && echo "path $path"; done
		command -v nft >/dev/null && nft list tables 2>/dev/null
	} >"$RUN_DIR/host.before.part"
	mv "$RUN_DIR/host.before.part" "$RUN_DIR/host.before"
fi

# cidr_overlap A/len B/len: the two IPv4 ranges share an address.
ip2int() { local IFS=.; read -r a b c d <<<"$1"; echo $(((a << 24) | (b << 16) | (c << 8) | d)); }
cidr_overlap() {
	local a=${1%/*} al=32 b=${2%/*} bl=32 l mask x y
	[[ $1 != */* ]] || al=${1#*/}
	[[ $2 != */* ]] || bl=${2#*/}
	l=$((al < bl ? al : bl))
	mask=$(((0xffffffff << (32 - l)) & 0xffffffff))
	x=$(($(ip2int "$a") & mask))
	y=$(($(ip2int "$b") & mask))
	((x == y))
}
while read -r dst rest; do
	[[ $dst =~ ^[0-9] && " $rest " != *" dev $CNI_BRIDGE "* ]] || continue
	for range in "$POD_CIDR" "$SERVICE_CIDR"; do
		cidr_overlap "$dst" "$range" && die "host route $dst overlaps the cluster range $range (change it in cluster/versions.env)"
	done
done < <(ip -4 route show)
for range in "$POD_CIDR" "$SERVICE_CIDR"; do
	cidr_overlap "$HOST_IP" "$range" && die "the host address $HOST_IP is inside the cluster range $range"
done

# start NAME COMMAND...: run COMMAND detached (own session, so an interrupted
# make does not take it down), output to .cluster/logs/NAME.log, pid recorded.
start() {
	local name=$1
	shift
	if running "$name"; then
		log "$name is running (pid $(<"$(pid_file "$name")"))"
		return 0
	fi
	log "starting $name"
	(
		# Hold none of the caller's descriptors (a CI step waits for its pipes to close).
		for fd in /proc/self/fd/*; do
			fd=${fd##*/}
			((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
		done
		exec setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null
	) &
	echo $! >"$(pid_file "$name")"
}
# wait_up NAME WHAT COMMAND...: like wait_for, but gives up at once if NAME died.
wait_up() {
	local name=$1 what=$2
	shift 2
	local deadline=$((SECONDS + UP_TIMEOUT))
	until "$@" >/dev/null 2>&1; do
		running "$name" || die "$name exited; see $LOG_DIR/$name.log: $(tail -n 5 "$LOG_DIR/$name.log")"
		((SECONDS < deadline)) || die "$name: timed out after ${UP_TIMEOUT}s waiting for $what; see $LOG_DIR/$name.log"
		sleep 0.2
	done
}

# --- certificates ----------------------------------------------------------------
# All keys ECDSA P-256 (the service-account signing key RSA 2048), made once per
# cluster state; down.sh removes them.
new_ca() { # NAME CN
	[[ -f $PKI_DIR/$1.crt ]] && return 0
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$PKI_DIR/$1.key" -out "$PKI_DIR/$1.crt" -days 3650 -subj "/CN=$2" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
		2>/dev/null
}
new_cert() { # CA NAME SUBJECT USAGE(client|server|both) [SANS]
	local ca=$1 name=$2 subject=$3 usage=$4 sans=${5:-} eku
	[[ -f $PKI_DIR/$name.crt ]] && return 0
	case $usage in
	client) eku=clientAuth ;;
	server) eku=serverAuth ;;
	both) eku=serverAuth,clientAuth ;;
	esac
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$PKI_DIR/$name.key" -out "$PKI_DIR/$name.csr" -subj "$subject" 2>/dev/null
	openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/$ca.crt" -CAkey "$PKI_DIR/$ca.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days 365 -out "$PKI_DIR/$name.crt" \
		-extfile <(
			echo "basicConstraints=critical,CA:FALSE"
			echo "keyUsage=critical,digitalSignature,keyEncipherment"
			echo "extendedKeyUsage=$eku"
			[[ -z $sans ]] || echo "subjectAltName=$sans"
		) 2>/dev/null
	rm -f "$PKI_DIR/$name.csr"
}
(
	umask 077
	new_ca ca kubefaas-ca
	new_ca etcd-ca kubefaas-etcd-ca
	new_ca front-proxy-ca kubefaas-front-proxy-ca
	new_cert etcd-ca etcd-server /CN=etcd-server server "IP:127.0.0.1,DNS:localhost"
	new_cert etcd-ca apiserver-etcd-client /CN=kube-apiserver-etcd-client client
	new_cert ca apiserver /CN=kube-apiserver server \
		"IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,IP:$HOST_IP,DNS:localhost,DNS:$NODE_NAME,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
	new_cert ca apiserver-kubelet-client /CN=kube-apiserver-kubelet-client client
	new_cert front-proxy-ca front-proxy-client /CN=front-proxy-client client
	new_cert ca admin "/O=system:masters/CN=kubefaas-admin" client
	new_cert ca controller-manager /CN=system:kube-controller-manager client
	new_cert ca scheduler /CN=system:kube-scheduler client
	new_cert ca kube-proxy /CN=system:kube-proxy client
	new_cert ca kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" client
	new_cert ca kubelet-server "/CN=system:node:$NODE_NAME" server "IP:$HOST_IP,IP:127.0.0.1,DNS:$NODE_NAME,DNS:localhost"
	if [[ ! -f $PKI_DIR/sa.key ]]; then
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI_DIR/sa.key" 2>/dev/null
		openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
	fi
)

# kubeconfig FILE CERT: a kubeconfig for the client certificate CERT, data inline.
kubeconfig() {
	local file=$1 cert=$2
	[[ -f $file ]] && return 0
	(
		umask 077
		cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubefaas
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/$cert.key")
contexts:
- name: kubefaas
  context: {cluster: kubefaas, user: $cert}
current-context: kubefaas
EOF
	)
}
kubeconfig "$KUBECONFIG_ADMIN" admin
for c in controller-manager scheduler kube-proxy kubelet-client; do
	kubeconfig "$STATE_DIR/$c.kubeconfig" "$c"
done

# --- etcd --------------------------------------------------------------------------
etcd_healthy() {
	curl -fsS --cacert "$PKI_DIR/etcd-ca.crt" --cert "$PKI_DIR/apiserver-etcd-client.crt" \
		--key "$PKI_DIR/apiserver-etcd-client.key" "https://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'
}
start etcd etcd --name kubefaas --data-dir "$STATE_DIR/etcd" \
	--listen-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" \
	--advertise-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster "kubefaas=http://127.0.0.1:$ETCD_PEER_PORT" \
	--cert-file "$PKI_DIR/etcd-server.crt" --key-file "$PKI_DIR/etcd-server.key" \
	--client-cert-auth --trusted-ca-file "$PKI_DIR/etcd-ca.crt" \
	--listen-metrics-urls "" --log-level warn
wait_up etcd "etcd health" etcd_healthy

# --- kube-apiserver -------------------------------------------------------------------
start kube-apiserver kube-apiserver \
	--advertise-address "$HOST_IP" --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" \
	--etcd-servers "https://127.0.0.1:$ETCD_CLIENT_PORT" --etcd-cafile "$PKI_DIR/etcd-ca.crt" \
	--etcd-certfile "$PKI_DIR/apiserver-etcd-client.crt" --etcd-keyfile "$PKI_DIR/apiserver-etcd-client.key" \
	--tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
	--client-ca-file "$PKI_DIR/ca.crt" \
	--kubelet-client-certificate "$PKI_DIR/apiserver-kubelet-client.crt" \
	--kubelet-client-key "$PKI_DIR/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority "$PKI_DIR/ca.crt" \
	--kubelet-preferred-address-types InternalIP,Hostname \
	--authorization-mode Node,RBAC \
	--enable-admission-plugins NodeRestriction,PodSecurity \
	--allow-privileged=true \
	--service-cluster-ip-range "$SERVICE_CIDR" \
	--service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
	--service-account-key-file "$PKI_DIR/sa.pub" \
	--service-account-signing-key-file "$PKI_DIR/sa.key" \
	--requestheader-client-ca-file "$PKI_DIR/front-proxy-ca.crt" \
	--requestheader-allowed-names front-proxy-client \
	--requestheader-username-headers X-Remote-User \
	--requestheader-group-headers X-Remote-Group \
	--requestheader-extra-headers-prefix X-Remote-Extra- \
	--proxy-client-cert-file "$PKI_DIR/front-proxy-client.crt" \
	--proxy-client-key-file "$PKI_DIR/front-proxy-client.key" \
	--profiling=false
apiserver_ready() { curl -fsS --cacert "$PKI_DIR/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -qx ok; }
wait_up kube-apiserver "/readyz" apiserver_ready
# The API server reaches kubelets (logs, exec, port-forward) as this user.
kubectl_admin apply -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubefaas:apiserver-kubelet-client
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:kubelet-api-admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}
EOF

# --- kube-controller-manager, kube-scheduler -----------------------------------------
start kube-controller-manager kube-controller-manager \
	--kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
	--authentication-kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
	--authorization-kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
	--bind-address 127.0.0.1 --secure-port "$CONTROLLER_MANAGER_PORT" \
	--client-ca-file "$PKI_DIR/ca.crt" --requestheader-client-ca-file "$PKI_DIR/front-proxy-ca.crt" \
	--cluster-signing-cert-file "$PKI_DIR/ca.crt" --cluster-signing-key-file "$PKI_DIR/ca.key" \
	--root-ca-file "$PKI_DIR/ca.crt" --service-account-private-key-file "$PKI_DIR/sa.key" \
	--use-service-account-credentials \
	--allocate-node-cidrs=false \
	--service-cluster-ip-range "$SERVICE_CIDR" \
	--leader-elect=false --profiling=false
start kube-scheduler kube-scheduler \
	--kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
	--authentication-kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
	--authorization-kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
	--bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
	--leader-elect=false --profiling=false
healthz() { curl -fsSk "https://127.0.0.1:$1/healthz" | grep -qx ok; }
wait_up kube-controller-manager "/healthz" healthz "$CONTROLLER_MANAGER_PORT"
wait_up kube-scheduler "/healthz" healthz "$SCHEDULER_PORT"

# --- host settings the node needs (down.sh restores the saved values) ----------------
# The kubelet sets the vm./kernel. ones itself (its kernel defaults); we save them first.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
if [[ ! -f $RUN_DIR/sysctl.saved ]]; then
	for key in "${SYSCTLS[@]}"; do
		echo "$key=$(sysctl -n "$key")"
	done >"$RUN_DIR/sysctl.saved.part"
	mv "$RUN_DIR/sysctl.saved.part" "$RUN_DIR/sysctl.saved"
fi
# Forwarding for pod traffic; bridged traffic through iptables, so Services work
# between pods on the one bridge.
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
# A host firewall that drops forwarded packets by default (Docker's, ufw) would
# drop pod traffic: accept the pod range, with our network's comment so that
# down.sh removes the rules with the rest.
if [[ $(iptables -S FORWARD 2>/dev/null | head -1) != "-P FORWARD ACCEPT" ]]; then
	for dir in -s -d; do
		rule=(FORWARD "$dir" "$POD_CIDR" -m comment --comment "name: \"$CNI_NETWORK_NAME\" pod forwarding" -j ACCEPT)
		iptables -C "${rule[@]}" 2>/dev/null || iptables -I "${rule[@]}"
	done
fi

# --- containerd ----------------------------------------------------------------------------
((${#CONTAINERD_SOCK} < 100)) || die "the containerd socket path $CONTAINERD_SOCK is too long for a unix socket; clone the repo to a shorter path"
mkdir -p "$CONTAINERD_DIR" "$CNI_DIR/net.d" "$CNI_DIR/ipam"
cat >"$CONTAINERD_DIR/config.toml" <<EOF
# Written by cluster/up.sh. containerd 1.6, on private paths only.
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The sandbox lacks CAP_SYS_RESOURCE: never lower a process's oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$CONTAINERD_DIR/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_DIR/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
# One bridge for every pod, the node's gateway address on it, NAT for traffic
# leaving the pod range; hairpin so a pod reaches itself through its Service.
gateway=${NODE_POD_CIDR%.*}.1
cat >"$CNI_DIR/net.d/10-$CNI_NETWORK_NAME.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "mtu": $CNI_MTU,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_DIR/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$gateway"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
start containerd containerd --config "$CONTAINERD_DIR/config.toml"
ctr_() { ctr --address "$CONTAINERD_SOCK" "$@"; }
wait_up containerd "its socket" ctr_ version
# import_image ARCHIVE NAME: import ARCHIVE unless NAME is already there.
import_image() {
	if ! ctr_ -n k8s.io images ls -q | grep -qxF "$2"; then
		"$CLUSTER_DIR/load-images.sh" "$1" >/dev/null
	fi
}
import_image "$IMAGE_DIR/pause-$PAUSE_VERSION.tar" "$PAUSE_IMAGE"
import_image "$IMAGE_DIR/coredns-$COREDNS_VERSION.tar" "$COREDNS_IMAGE"

# --- kubelet ---------------------------------------------------------------------------------
# Pods' cgroups go under /kubefaas in every hierarchy (down.sh removes it).
for cg in $(cgroup_dirs); do
	mkdir -p "$cg"
	# A new v1 cpuset starts empty; give it the parent's CPUs and memory nodes.
	if [[ -f ${cg%/*}/cpuset.cpus && -f $cg/cpuset.cpus && -z $(<"$cg/cpuset.cpus") ]]; then
		cat "${cg%/*}/cpuset.cpus" >"$cg/cpuset.cpus"
		cat "${cg%/*}/cpuset.mems" >"$cg/cpuset.mems"
	fi
done
mkdir -p "$KUBELET_DIR" "$LOG_DIR/pods"
# Pods with dnsPolicy Default (CoreDNS) get the node's resolvers: with
# systemd-resolved, the real ones, not its 127.0.0.53 stub (a loop for CoreDNS).
resolv_conf=/etc/resolv.conf
if grep -qE '^nameserver 127\.' /etc/resolv.conf && [[ -f /run/systemd/resolve/resolv.conf ]]; then
	resolv_conf=/run/systemd/resolve/resolv.conf
fi
cat >"$STATE_DIR/kubelet.yaml" <<EOF
# Written by cluster/up.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# The host has cgroup v1 and containerd 1.6 (no CRI cgroup-driver query).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PARENT
address: $HOST_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI_DIR/kubelet-server.crt
tlsPrivateKeyFile: $PKI_DIR/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true, cacheTTL: 30s}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization:
  mode: Webhook
  webhook: {cacheAuthorizedTTL: 30s, cacheUnauthorizedTTL: 10s}
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $resolv_conf
podLogsDir: $LOG_DIR/pods
volumePluginDir: $KUBELET_DIR/volume-plugins
failSwapOn: false
# No image can be pulled here: never collect one.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
rotateCertificates: false
serverTLSBootstrap: false
maxPods: 110
EOF
start kubelet kubelet --config "$STATE_DIR/kubelet.yaml" \
	--kubeconfig "$STATE_DIR/kubelet-client.kubeconfig" \
	--root-dir "$KUBELET_DIR" --cert-dir "$KUBELET_DIR/pki" \
	--hostname-override "$NODE_NAME" --node-ip "$HOST_IP" --v 1

# --- kube-proxy --------------------------------------------------------------------------------
cat >"$STATE_DIR/kube-proxy.yaml" <<EOF
# Written by cluster/up.sh.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
# Leave the host's conntrack and route_localnet sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: false, minSyncPeriod: 1s, syncPeriod: 30s}
# NodePorts on the node's address only (not on every local address).
nodePortAddresses: [primary]
EOF
start kube-proxy kube-proxy --config "$STATE_DIR/kube-proxy.yaml"

wait_up kubelet "node $NODE_NAME Ready" node_ready
proxy_healthy() { curl -fsS "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz" >/dev/null; }
wait_up kube-proxy "/healthz" proxy_healthy
node_ready_at=$SECONDS

# --- cluster DNS -----------------------------------------------------------------------------
sed -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|g" \
	-e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" -e "s|@COREDNS_PORT@|$COREDNS_CONTAINER_PORT|g" \
	"$CLUSTER_DIR/manifests/coredns.yaml" | kubectl_admin apply -f - >/dev/null
kubectl_admin -n kube-system rollout status deployment/coredns --timeout "${UP_TIMEOUT}s" >/dev/null ||
	die "CoreDNS did not become ready: $(kubectl_admin -n kube-system get pods -l k8s-app=kube-dns -o wide 2>&1)"

log "node $NODE_NAME Ready after $((node_ready_at - started_at))s, DNS ready after $((SECONDS - started_at))s"
log "kubeconfig: $KUBECONFIG_ADMIN (API server https://127.0.0.1:$APISERVER_PORT, advertised at $HOST_IP)"
