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
