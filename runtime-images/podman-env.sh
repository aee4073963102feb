# Sourced by build-local.sh and test-local.sh: points podman and buildah at a private store
# under $KUBEFAAS_CACHE/images (never /var/lib/containers), with host networking (no bridge, no
# iptables rule is ever created), no registry to resolve short names against, and the ulimits
# the sandbox allows (it lacks CAP_SYS_RESOURCE, so the engines' higher defaults fail).
# shellcheck shell=bash

kf_cache=${KUBEFAAS_CACHE:-$HOME/.cache/kubefaas}/images
kf_podman=$kf_cache/podman
mkdir -p "$kf_podman"/{storage,run,tmp,networks}

cat >"$kf_podman/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$kf_podman/storage"
runroot = "$kf_podman/run"
EOF
cat >"$kf_podman/containers.conf" <<EOF
[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "$kf_podman/tmp"

[network]
network_config_dir = "$kf_podman/networks"
EOF
cat >"$kf_podman/registries.conf" <<EOF
# Nothing is ever pulled: every image is local or named in full.
unqualified-search-registries = []
short-name-mode = "enforcing"
EOF

export CONTAINERS_STORAGE_CONF=$kf_podman/storage.conf
export CONTAINERS_CONF=$kf_podman/containers.conf
export CONTAINERS_REGISTRIES_CONF=$kf_podman/registries.conf
# The engines' own defaults for RUN steps and containers ask for more than the sandbox allows.
kf_ulimits=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

# One user of the store at a time: a build removes the working containers a failed run left,
# and both unmount the store on exit. A test run by build-local.sh shares its lock.
kf_lock_store() {
  [[ -z ${KUBEFAAS_IMAGES_STORE_LOCKED:-} ]] || return 0
  exec 9>"$kf_cache/lock"
  if ! flock -n 9; then
    echo "waiting for another build-local.sh or test-local.sh to finish (at most 1 hour)" >&2
    flock -w 3600 9 || { echo "$kf_cache/lock is still held" >&2; exit 1; }
  fi
  export KUBEFAAS_IMAGES_STORE_LOCKED=1
}

# Leaves no mount behind: containers/storage keeps its overlay directory (and any working
# container's root) mounted after the engines exit. Called on exit, when nothing of ours runs.
kf_release_store() {
  buildah rm --all >/dev/null 2>&1 || true
  grep -o " $kf_podman/[^ ]*" /proc/mounts | sort -r | xargs -r umount 2>/dev/null || true
}
