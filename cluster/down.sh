#!/usr/bin/env bash
# Stops the test cluster (make cluster-down) and removes everything it made on
# the host: processes, mounts (pod volumes, overlay snapshots, netns, shm), the
# CNI bridge and veths, the KUBE-* and kubefaas CNI iptables rules and chains,
# the /kubefaas cgroups, the sysctls up.sh changed (restored), and the cluster
# state under .cluster/ (kept: the logs in .cluster/logs/ and image archives
# in .cluster/images/). Then checks that
# none of it remains, prints what did, and fails if anything did. Safe to run
# when nothing runs.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
need_root
export PATH=$BIN_DIR:$PATH
started_at=$SECONDS
# What the host had before up.sh (host paths, nftables tables); empty if unknown.
host_before=$(cat "$RUN_DIR/host.before" 2>/dev/null)
had() { [[ -z $host_before ]] || grep -qxF "$1" <<<"$host_before"; }
# Our containerd's sandboxes and tasks, for the files they leave in fixed host
# paths when they are not torn down through CRI (a crashed containerd).
task_ids=$(ls "$CONTAINERD_DIR/state/io.containerd.runtime.v2.task/k8s.io" \
	"$CONTAINERD_DIR/state/io.containerd.grpc.v1.cri/sandboxes" 2>/dev/null | grep -E '^[0-9a-f]{64}$' | sort -u)

# stop NAME [TIMEOUT]: SIGTERM the component, SIGKILL it after TIMEOUT seconds.
stop() {
	local name=$1 timeout=${2:-10} f pid
	f=$(pid_file "$name")
	if running "$name"; then
		pid=$(<"$f")
		log "stopping $name (pid $pid)"
		kill -TERM "$pid" 2>/dev/null
		if ! wait_for "$timeout" "$name to exit" dead "$pid"; then
			kill -KILL "$pid" 2>/dev/null
			wait_for 5 "$name to die" dead "$pid"
		fi
	fi
	rm -f "$f"
}

# our_pids: the live processes of this cluster: the components (our builds of
# them, and containerd with our config), the shims of our containerd, everything
# in our pods' cgroups. Not kubectl or helm, nor a process that merely names a
# file under .cluster/. (A few processes in all, not one per PID: it runs often.)
our_pids() {
	local candidates pid
	candidates=$({
		find /proc -mindepth 2 -maxdepth 2 -name exe \( -lname "$BIN_DIR/etcd*" -o -lname "$BIN_DIR/kube-*" \
			-o -lname "$BIN_DIR/kubelet*" \) -printf '%h\n' 2>/dev/null
		grep -alsF -e "$CONTAINERD_SOCK" -e "$CONTAINERD_DIR/config.toml" /proc/[0-9]*/cmdline
		grep -lsF ":/$CGROUP_PARENT/" /proc/[0-9]*/cgroup
	} | awk -F/ '{print $3}' | sort -un | grep -vxF -e "$$" -e "$BASHPID")
	for pid in $candidates; do alive "$pid" && echo "$pid"; done
}
our_mounts() { findmnt -rn -o TARGET | grep -E "^$STATE_DIR(/|$)" | sort -r; }
our_chains() { # CMD TABLE: KUBE-* chains, and CNI-* chains our network's rules jump to
	"$1" -t "$2" -S 2>/dev/null | awk -v net="name: \\\\\"$CNI_NETWORK_NAME\\\\\"" '
		$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }
		$1 == "-A" && index($0, net) { for (i = 1; i < NF; i++) if ($i == "-j" && $(i+1) ~ /^CNI-/) print $(i+1) }' | sort -u
}

# --- stop the components ----------------------------------------------------
# Controllers first (no new pods), then the kubelet (no restarts), then every
# pod sandbox through CRI, so the CNI plugins remove their networks.
stop kube-controller-manager
stop kube-scheduler
stop kubelet
if running containerd; then
	log "removing every pod sandbox"
	crictl --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 30s rmp --all --force >/dev/null 2>&1 ||
		log "crictl rmp failed; killing what remains"
	for task in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
		ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1
	done
fi
stop kube-proxy
# kube-proxy removes its own rules (the sweep below catches anything else).
if [[ -x $BIN_DIR/kube-proxy ]] && iptables -t nat -S 2>/dev/null | grep -q -- '-N KUBE-'; then
	kube-proxy --cleanup >>"$LOG_DIR/kube-proxy.log" 2>&1 || true
fi
stop containerd
# Anything else of ours: shims and container processes (left running when
# containerd or the kubelet died), then, once the API server and etcd are
# stopped, any stray.
kill_ours() {
	local pids
	pids=$(our_pids | grep -vxF -e "$(cat "$(pid_file kube-apiserver)" 2>/dev/null)" -e "$(cat "$(pid_file etcd)" 2>/dev/null)")
	[[ -n $pids ]] || return 0
	log "killing remaining processes: $(echo $pids)"
	kill -KILL $pids 2>/dev/null
	wait_for 10 "remaining processes to die" dead $pids
}
kill_ours
stop kube-apiserver 20
stop etcd
kill_ours

# --- mounts ------------------------------------------------------------------
log "unmounting"
for m in $(our_mounts); do
	umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
done

# --- network -------------------------------------------------------------------
log "removing the network"
if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
	for veth in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}'); do
		ip link del "$veth" 2>/dev/null
	done
	ip link del "$CNI_BRIDGE"
fi
# The CNI library's result cache (outside our state: containerd 1.6 has no
# setting for it), one file per attachment of our network.
rm -f /var/lib/cni/results/"$CNI_NETWORK_NAME"-* 2>/dev/null
for id in $task_ids; do
	rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null
	# A shim's socket: /run/containerd/s/sha256(<containerd address>/<namespace>/<id>).
	rm -f "/run/containerd/s/$(printf %s "$CONTAINERD_SOCK/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
done
# The kubelet links every container's log into /var/log/containers (a fixed
# path); remove the links that point at our pods' logs.
our_log_links() { find /var/log/containers -maxdepth 1 -type l -lname "$LOG_DIR/*" 2>/dev/null; }
our_log_links | xargs -r rm -f

# sweep CMD: delete every rule that jumps to one of our chains or carries our
# network's comment, then the chains themselves, in every table.
sweep() {
	local cmd=$1 table chains rules
	for table in filter nat mangle raw; do
		chains=$(our_chains "$cmd" "$table")
		# Rules, numbered within their chain, deleted from the bottom up.
		rules=$("$cmd" -t "$table" -S 2>/dev/null | awk -v chains=" $(echo $chains) " -v net="name: \\\\\"$CNI_NETWORK_NAME\\\\\"" '
			$1 == "-A" {
				n[$2]++
				mine = index($0, net) > 0
				for (i = 1; i < NF; i++) if (($i == "-j" || $i == "-g") && index(chains, " " $(i+1) " ")) mine = 1
				if (mine && !index(chains, " " $2 " ")) print $2, n[$2]
			}' | sort -k1,1 -k2,2nr)
		while read -r chain num; do
			[[ -n $chain ]] && "$cmd" -t "$table" -D "$chain" "$num"
		done <<<"$rules"
		for chain in $chains; do "$cmd" -t "$table" -F "$chain" 2>/dev/null; done
		for chain in $chains; do "$cmd" -t "$table" -X "$chain" 2>/dev/null; done
	done
}
sweep iptables
sweep ip6tables
conntrack -D -d "$SERVICE_CIDR" >/dev/null 2>&1
conntrack -D -s "$POD_CIDR" >/dev/null 2>&1
conntrack -D -d "$POD_CIDR" >/dev/null 2>&1

# Host paths and (empty) nftables tables that did not exist before up.sh.
if [[ -n $host_before ]]; then
	had "path /var/lib/kubelet/device-plugins" || rm -f /var/lib/kubelet/device-plugins/kubelet.sock
	for path in "${HOST_PATHS[@]}"; do
		had "path $path" || rmdir "$path" 2>/dev/null
	done
	# iptables-nft makes a table the first time a rule needs it; drop the ones
	# our components made, once nothing but the base chains is left in them.
	if command -v nft >/dev/null; then
		nft list tables 2>/dev/null | while read -r _ family name; do
			had "table $family $name" && continue
			nft list table "$family" "$name" | grep -qvE '^\s*(table|chain|type|policy|\}|$)' ||
				nft delete table "$family" "$name"
		done
	fi
fi

# --- cgroups ------------------------------------------------------------------
log "removing cgroups"
for cg in $(cgroup_dirs); do
	[[ -d $cg ]] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
done

# --- sysctls -------------------------------------------------------------------
if [[ -f $RUN_DIR/sysctl.saved ]]; then
	while IFS== read -r key value; do
		sysctl -qw "$key=$value" || log "cannot restore $key=$value"
	done <"$RUN_DIR/sysctl.saved"
fi

# --- state ----------------------------------------------------------------------
if [[ -z $(our_mounts) ]] && [[ -d $STATE_DIR ]]; then
	for entry in "$STATE_DIR"/* "$STATE_DIR"/.[!.]*; do
		case $entry in
		"$LOG_DIR" | "$STATE_DIR/logs.prev" | "$STATE_DIR/images") ;; # logs; image archives built for the cluster
		*) [[ -e $entry ]] && rm -rf --one-file-system "$entry" ;;
		esac
	done
fi

# --- what remains ---------------------------------------------------------------
log "checking what remains"
left=()
pids=$(our_pids)
[[ -z $pids ]] || left+=("processes: $(for p in $pids; do echo "$p:$(tr '\0' ' ' </proc/$p/cmdline | cut -c1-80)"; done)")
mounts=$(our_mounts)
[[ -z $mounts ]] || left+=("mounts: $(echo $mounts)")
netns=$(ls /var/run/netns 2>/dev/null | grep -E '^cni-' || true)
ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && left+=("interface: $CNI_BRIDGE")
for cmd in iptables ip6tables; do
	for table in filter nat mangle raw; do
		rules=$("$cmd" -t "$table" -S 2>/dev/null | grep -E -- "KUBE-|name: \\\\\"$CNI_NETWORK_NAME\\\\\"" || true)
		[[ -z $rules ]] || left+=("$cmd -t $table: $(echo "$rules" | wc -l) rules/chains, e.g. $(echo "$rules" | head -1)")
	done
done
links=$(our_log_links)
[[ -z $links ]] || left+=("links in /var/log/containers: $(echo "$links" | wc -l)")
# Our files in the fixed host paths; the directories themselves may hold
# another containerd's or kubelet's files by now (only a note, then).
ours_in_host_paths=$(
	ls -d /var/lib/cni/results/"$CNI_NETWORK_NAME"-* 2>/dev/null
	had "path /var/lib/kubelet/device-plugins" || ls -d /var/lib/kubelet/device-plugins/kubelet.sock 2>/dev/null
	for id in $task_ids; do
		ls -d /var/lib/cni/results/*-"$id"-* 2>/dev/null
		ls -d "/run/containerd/s/$(printf %s "$CONTAINERD_SOCK/k8s.io/$id" | sha256sum | cut -d' ' -f1)" 2>/dev/null
	done
)
[[ -z $ours_in_host_paths ]] || left+=("files in host paths: $(echo $ours_in_host_paths)")
foreign=()
for path in "${HOST_PATHS[@]}"; do
	[[ -e $path ]] && ! had "path $path" && foreign+=("$path")
done
cgroups=$(for cg in $(cgroup_dirs); do [[ -d $cg ]] && echo "$cg"; done)
[[ -z $cgroups ]] || left+=("cgroups: $(echo $cgroups)")
[[ -e $STATE_DIR/etcd || -e $STATE_DIR/containerd || -e $STATE_DIR/kubelet ]] && left+=("state: $STATE_DIR (not removed)")

if ((${#left[@]})); then
	log "down after $((SECONDS - started_at))s, but these remain:"
	printf '  %s\n' "${left[@]}" >&2
	exit 1
fi
((${#foreign[@]} == 0)) || log "note: ${foreign[*]} appeared while the cluster ran and hold files of something else now; left alone"
[[ -z $netns ]] || log "note: /var/run/netns has cni-* entries not made by this cluster (its netns live under .cluster/): $(echo $netns)"
log "down after $((SECONDS - started_at))s; no process, mount, interface, iptables rule or cgroup left behind"
