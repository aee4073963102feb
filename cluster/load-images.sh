#!/usr/bin/env bash
# Imports image archives (OCI or docker-archive tars, as `podman save` or
# `buildah push ... oci-archive:` write them) into the test cluster's containerd,
# namespace k8s.io, where the kubelet finds them. Pods must use
# imagePullPolicy IfNotPresent or Never: nothing can be pulled.
# Usage: cluster/load-images.sh ARCHIVE...
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root
(($#)) || die "usage: cluster/load-images.sh ARCHIVE..."
running containerd || die "the cluster's containerd is not running (make cluster-up)"
for archive in "$@"; do
	[[ -f $archive ]] || die "no such archive: $archive"
	start=$SECONDS
	# --all-platforms: keep whatever the archive holds (no platform filtering to fail on).
	ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --all-platforms "$archive" >&2
	log "imported $archive in $((SECONDS - start))s"
done
ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -v '^sha256:' || true
