#!/usr/bin/env bash
# Builds what the test cluster runs, into a cache outside the repo
# (${KUBEFAAS_CACHE:-~/.cache/kubefaas}/cluster/<kubernetes version>/), skipping
# whatever is already there for the pinned versions (cluster/versions.env):
#   bin/    kube-apiserver kube-controller-manager kube-scheduler kube-proxy
#           kubelet kubectl (k8s.io/kubernetes), etcd, crictl, coredns, pause
#   images/ pause-<v>.tar, coredns-<v>.tar, netcheck-<v>.tar (smoke.sh's probe):
#           OCI archives for `ctr images import`
# Needs Go and the module proxy (or a warm module cache), gcc and libc6-dev.
# Usage: cluster/build.sh [kubernetes|etcd|crictl|pause|coredns|netcheck|helm]...
#          (default: all but helm; `cluster/build.sh helm` builds helm if needed
#          and prints its path on stdout, the only thing it prints there)
#        cluster/build.sh --print-bin-dir
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [[ ${1:-} == --print-bin-dir ]]; then
	echo "$BIN_DIR"
	exit 0
fi
parts=("$@")
((${#parts[@]})) || parts=(kubernetes etcd crictl pause coredns netcheck)
want() { [[ " ${parts[*]} " == *" $1 "* ]]; }

mkdir -p "$BIN_DIR" "$IMAGE_DIR"
# What building needs, checked before the first build (not when all is built).
prereqs_ok=
prereqs() {
	[[ -z $prereqs_ok ]] || return 0
	command -v go >/dev/null || die "go is missing (Go 1.26 or newer: the Kubernetes modules need it)"
	if [[ $(id -u) == 0 ]]; then
		need_commands gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev jq:jq
	else
		command -v gcc >/dev/null && command -v jq >/dev/null || die "gcc (with libc6-dev) and jq are needed"
	fi
	prereqs_ok=1
}
export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--buildvcs=false}

# stamp_ok NAME VALUE: NAME was built for VALUE (a version or content hash).
stamp_ok() { [[ -x $BIN_DIR/$1 && -f $BIN_DIR/.$1.stamp && $(<"$BIN_DIR/.$1.stamp") == "$2" ]]; }
stamp() { echo "$2" >"$BIN_DIR/.$1.stamp"; }
timed() {
	local what=$1 start=$SECONDS
	shift
	prereqs
	log "building $what"
	"$@"
	log "built $what in $((SECONDS - start))s"
}

# --- Kubernetes --------------------------------------------------------------
k8s_stamp="$KUBERNETES_VERSION $(sha256sum "$CLUSTER_DIR/tools/kubernetes/go.sum" | cut -c1-16)"
k8s_missing=()
for cmd in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl; do
	stamp_ok "$cmd" "$k8s_stamp" || k8s_missing+=("k8s.io/kubernetes/cmd/$cmd")
done
if want kubernetes && ((${#k8s_missing[@]})); then
	minor=${KUBERNETES_VERSION#v*.}
	minor=${minor%%.*}
	major=${KUBERNETES_VERSION#v}
	major=${major%%.*}
	vpkg=k8s.io/component-base/version
	ldflags="-s -w -X $vpkg.gitVersion=$KUBERNETES_VERSION -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
	build_k8s() {
		(cd "$CLUSTER_DIR/tools/kubernetes" && go build -trimpath -o "$BIN_DIR/" -ldflags "$ldflags" "${k8s_missing[@]}")
	}
	timed "Kubernetes $KUBERNETES_VERSION: ${k8s_missing[*]##*/}" build_k8s
	for pkg in "${k8s_missing[@]}"; do stamp "${pkg##*/}" "$k8s_stamp"; done
fi

# --- etcd --------------------------------------------------------------------
etcd_stamp="$ETCD_VERSION $(sha256sum "$CLUSTER_DIR/tools/etcd/go.sum" | cut -c1-16)"
if want etcd && ! stamp_ok etcd "$etcd_stamp"; then
	build_etcd() {
		(cd "$CLUSTER_DIR/tools/etcd" && go build -trimpath -o "$BIN_DIR/etcd" -ldflags "-s -w" go.etcd.io/etcd/server/v3)
	}
	timed "etcd $ETCD_VERSION" build_etcd
	stamp etcd "$etcd_stamp"
fi

# --- crictl ------------------------------------------------------------------
crictl_stamp="$CRICTL_VERSION $(sha256sum "$CLUSTER_DIR/tools/crictl/go.sum" | cut -c1-16)"
if want crictl && ! stamp_ok crictl "$crictl_stamp"; then
	build_crictl() {
		(cd "$CLUSTER_DIR/tools/crictl" && go build -trimpath -o "$BIN_DIR/crictl" \
			-ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl)
	}
	timed "crictl $CRICTL_VERSION" build_crictl
	stamp crictl "$crictl_stamp"
fi

# --- OCI archives, written by hand -------------------------------------------
# oci_archive ROOTFS NAME USER ENTRYPOINT_JSON OUT: a one-layer image of the
# directory ROOTFS, named NAME (containerd reads io.containerd.image.name on
# import), in the OCI image layout, tarred to OUT. Reproducible: fixed mtimes
# and owners, uncompressed layer.
oci_archive() {
	local rootfs=$1 name=$2 user=$3 entrypoint=$4 out=$5 tmp
	tmp=$(mktemp -d)
	mkdir -p "$tmp/blobs/sha256"
	chmod 0755 "$rootfs" # the image's / (mktemp made it 0700)
	tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
		-cf "$tmp/layer.tar" .
	local layer_digest layer_size config manifest config_digest manifest_digest
	layer_digest=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
	layer_size=$(stat -c %s "$tmp/layer.tar")
	mv "$tmp/layer.tar" "$tmp/blobs/sha256/$layer_digest"
	config=$(jq -cn --arg user "$user" --argjson ep "$entrypoint" --arg diff "sha256:$layer_digest" \
		'{architecture: "amd64", os: "linux",
		  config: {User: $user, Entrypoint: $ep, Env: ["PATH=/"], WorkingDir: "/"},
		  rootfs: {type: "layers", diff_ids: [$diff]},
		  history: [{created_by: "kubefaas cluster/build.sh"}]}')
	config_digest=$(printf %s "$config" | sha256sum | cut -d' ' -f1)
	printf %s "$config" >"$tmp/blobs/sha256/$config_digest"
	manifest=$(jq -cn --arg cd "sha256:$config_digest" --argjson cs "${#config}" \
		--arg ld "sha256:$layer_digest" --argjson ls "$layer_size" \
		'{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
		  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
		  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $ld, size: $ls}]}')
	manifest_digest=$(printf %s "$manifest" | sha256sum | cut -d' ' -f1)
	printf %s "$manifest" >"$tmp/blobs/sha256/$manifest_digest"
	jq -cn --arg md "sha256:$manifest_digest" --argjson ms "${#manifest}" --arg name "$name" \
		'{schemaVersion: 2, manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json",
		  digest: $md, size: $ms, platform: {architecture: "amd64", os: "linux"},
		  annotations: {"io.containerd.image.name": $name,
		                "org.opencontainers.image.ref.name": ($name | sub("^.*:"; ""))}}]}' \
		>"$tmp/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci-layout"
	tar -C "$tmp" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out.part" oci-layout index.json blobs
	mv "$out.part" "$out"
	rm -rf "$tmp"
}

# --- pause -------------------------------------------------------------------
pause_stamp="$PAUSE_VERSION $(sha256sum "$CLUSTER_DIR/pause/pause.c" | cut -c1-16)"
pause_tar=$IMAGE_DIR/pause-$PAUSE_VERSION.tar
if want pause && { ! stamp_ok pause "$pause_stamp" || [[ ! -f $pause_tar ]]; }; then
	build_pause() {
		gcc -static -Os -s -Wall -Wextra -Werror -DPAUSE_VERSION="\"$PAUSE_VERSION\"" \
			-o "$BIN_DIR/pause" "$CLUSTER_DIR/pause/pause.c"
		local root
		root=$(mktemp -d)
		install -m 0755 "$BIN_DIR/pause" "$root/pause"
		oci_archive "$root" "$PAUSE_IMAGE" 65535:65535 '["/pause"]' "$pause_tar"
		rm -rf "$root"
	}
	timed "$PAUSE_IMAGE" build_pause
	stamp pause "$pause_stamp"
fi

# --- CoreDNS -----------------------------------------------------------------
coredns_stamp="$COREDNS_VERSION $(cat "$CLUSTER_DIR/tools/coredns/main.go" "$CLUSTER_DIR/tools/coredns/go.sum" | sha256sum | cut -c1-16)"
coredns_tar=$IMAGE_DIR/coredns-$COREDNS_VERSION.tar
if want coredns && { ! stamp_ok coredns "$coredns_stamp" || [[ ! -f $coredns_tar ]]; }; then
	build_coredns() {
		(cd "$CLUSTER_DIR/tools/coredns" && go build -trimpath -o "$BIN_DIR/coredns" -ldflags "-s -w" .)
		local root
		root=$(mktemp -d)
		install -m 0755 "$BIN_DIR/coredns" "$root/coredns"
		oci_archive "$root" "$COREDNS_IMAGE" 65532:65532 '["/coredns"]' "$coredns_tar"
		rm -rf "$root"
	}
	timed "$COREDNS_IMAGE" build_coredns
	stamp coredns "$coredns_stamp"
fi

# --- netcheck (the smoke test's probe) ----------------------------------------
netcheck_stamp="$NETCHECK_VERSION $(sha256sum "$CLUSTER_DIR/tools/netcheck/main.go" | cut -c1-16)"
netcheck_tar=$IMAGE_DIR/netcheck-$NETCHECK_VERSION.tar
if want netcheck && { ! stamp_ok netcheck "$netcheck_stamp" || [[ ! -f $netcheck_tar ]]; }; then
	build_netcheck() {
		(cd "$CLUSTER_DIR/tools/netcheck" && go build -trimpath -o "$BIN_DIR/netcheck" -ldflags "-s -w" .)
		local root
		root=$(mktemp -d)
		install -m 0755 "$BIN_DIR/netcheck" "$root/netcheck"
		oci_archive "$root" "$NETCHECK_IMAGE" 65532:65532 '["/netcheck"]' "$netcheck_tar"
		rm -rf "$root"
	}
	timed "$NETCHECK_IMAGE" build_netcheck
	stamp netcheck "$netcheck_stamp"
fi

# --- helm (only when asked for) -----------------------------------------------
helm_stamp="$HELM_VERSION $(sha256sum "$CLUSTER_DIR/tools/helm/go.sum" | cut -c1-16)"
if want helm; then
	if ! stamp_ok helm "$helm_stamp"; then
		build_helm() {
			(cd "$CLUSTER_DIR/tools/helm" && go build -trimpath -o "$BIN_DIR/helm" \
				-ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
				helm.sh/helm/v4/cmd/helm)
		}
		timed "helm $HELM_VERSION" build_helm >&2
		stamp helm "$helm_stamp"
	fi
	echo "$BIN_DIR/helm"
fi

log "binaries in $BIN_DIR, images in $IMAGE_DIR"
