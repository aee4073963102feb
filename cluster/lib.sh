# Shared by the cluster scripts: paths, logging, bounded waits. Sourced, not run.
# shellcheck shell=bash

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$CLUSTER_DIR/.." && pwd)
# shellcheck source=versions.env
. "$CLUSTER_DIR/versions.env"

# Built artifacts live outside the repo, one directory per Kubernetes version.
CACHE_DIR=${KUBEFAAS_CACHE:-$HOME/.cache/kubefaas}/cluster/$KUBERNETES_VERSION
BIN_DIR=$CACHE_DIR/bin
IMAGE_DIR=$CACHE_DIR/images

# Everything a running cluster owns lives under .cluster/ (git-ignored).
STATE_DIR=$REPO_DIR/.cluster
PKI_DIR=$STATE_DIR/pki
LOG_DIR=$STATE_DIR/logs
RUN_DIR=$STATE_DIR/run
KUBECONFIG_ADMIN=$STATE_DIR/kubeconfig
CONTAINERD_DIR=$STATE_DIR/containerd
CONTAINERD_SOCK=$RUN_DIR/containerd.sock
KUBELET_DIR=$STATE_DIR/kubelet
CNI_DIR=$STATE_DIR/cni
# The kubelet puts its pods' cgroups under this parent in every hierarchy.
CGROUP_PARENT=kubefaas
# cgroup_dirs: our parent cgroup in each mounted hierarchy (v1 controllers and
# named hierarchies, the v2 one in hybrid or unified mode).
cgroup_dirs() { awk -v p="$CGROUP_PARENT" '$3 == "cgroup" || $3 == "cgroup2" {print $2 "/" p}' /proc/self/mounts; }

# The components, in start order; down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

# Fixed host paths the components create whatever they are told (the kubelet's
# device-plugin socket, its /var/log/containers links, the CNI result cache,
# the shims' sockets), deepest first. up.sh records which did not exist before;
# down.sh removes those (when empty again).
HOST_PATHS=(/var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers
	/var/lib/cni/results /var/lib/cni /run/containerd/s /run/containerd)

log() { printf '%s cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for TIMEOUT_SECONDS WHAT COMMAND...: run COMMAND until it succeeds,
# polling every 0.2 s, or fail after TIMEOUT_SECONDS.
wait_for() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			log "timed out after ${timeout}s waiting for $what"
			return 1
		fi
		sleep 0.2
	done
}

pid_file() { echo "$RUN_DIR/$1.pid"; }

# alive PID...: one of the processes exists and is not a zombie.
alive() {
	local pid state
	for pid; do
		state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || continue
		[[ -n $state && $state != Z ]] && return 0
	done
	return 1
}
dead() { ! alive "$@"; }

# running NAME: the component's recorded process is alive.
running() {
	local f pid
	f=$(pid_file "$1")
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	[[ -n $pid ]] && alive "$pid"
}

need_root() { [[ $(id -u) == 0 ]] || die "run as root (the cluster runs containers, mounts and iptables rules)"; }

# need_commands COMMAND:PACKAGE...: install the Debian packages of the missing
# commands (apt-get, as root), or fail naming them.
need_commands() {
	local spec missing=()
	for spec; do
		if [[ ${spec%%:*} == /* ]]; then [[ -e ${spec%%:*} ]] && continue; else command -v "${spec%%:*}" >/dev/null && continue; fi
		[[ " ${missing[*]} " == *" ${spec#*:} "* ]] || missing+=("${spec#*:}")
	done
	((${#missing[@]})) || return 0
	command -v apt-get >/dev/null || die "missing: install ${missing[*]} (Debian package names)"
	log "installing ${missing[*]}"
	{ apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; } >&2 ||
		die "could not install ${missing[*]}"
}

kubectl_admin() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
