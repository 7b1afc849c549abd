#!/usr/bin/env bash
# `make image`: the two OCI image layouts, built with buildah FROM scratch.
#   target/oci/weauth-issuer   the issuer (static musl build, CA certificates, user 65532)
#   target/oci/weauth-filter   the filter's plugin.wasm in Istio's compat Wasm image form
#   target/oci/weauth-filter-native   the native build, /lib/libweauth_filter.so, for a volume
# Both are tagged with the workspace version and built with `--timestamp 0`, so the same inputs
# give the same digests (the filter's digest is what a WasmPlugin's `sha256` pins).
#
# It installs what it needs when missing (idempotent): the Debian packages buildah, musl-tools
# and ca-certificates (apt-get, through `sudo -n` when not root) and the rustup target
# x86_64-unknown-linux-musl; then builds the issuer for it (static) and the images.
#
# buildah keeps its own storage in target/buildah (vfs driver, chroot isolation), never the
# machine's. As root this works everywhere; as a normal user it needs user namespaces and
# subordinate ids (/etc/subuid). Where buildah cannot be installed or cannot run, this script
# says why and exits 3.
#
# `scripts/image.sh --check` (make image-check, part of make test) builds the issuer and the
# native module in the dev profile instead (the check is about the packaging — the layers, the
# user, the CA certificates, the static entrypoint answering in an empty root, the modules
# byte-equal to what was built — which the optimizer does not change), runs
# scripts/check_images.py on the result, and turns "buildah cannot run here" into a printed
# skip. With IMAGE_ISSUER_FROM and IMAGE_NATIVE_FROM set (`make test`: its own debug build of
# the static issuer and the native module, which its suites ran), it packs those files, waiting
# for them to appear, and compiles neither. Otherwise this script builds what it packs (the
# issuer, then the native module, then the wasm module, which `make test` has built by then).
#
# `scripts/image.sh --tools` only installs the Debian packages (with --check's skip): `make test`
# runs it in its tools job, so that every apt-get of the run comes one after another there, and
# none is left to the image check, which a failed build may stop half-way.
set -euo pipefail
check=false tools_only=false
case "${1:-}" in
  --check) check=true ;;
  --tools) check=true tools_only=true ;;
esac
skip() { # reason
  if $check; then
    echo "image: SKIPPED (the image checks did not run): $1"
    # Listed at the end of `make test` with the tests skipped here.
    if [ -n "${WEAUTH_SKIPPED_LOG:-}" ]; then
      echo "the image checks (make image-check): $1" >> "$WEAUTH_SKIPPED_LOG"
    fi
    exit 0
  fi
  echo "image: $1" >&2
  exit 3
}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' issuer/Cargo.toml | head -1)
musl_target=x86_64-unknown-linux-musl
if $check; then issuer_profile=dev native_profile=dev; else issuer_profile=release native_profile=native; fi
profile_dir() { if [ "$1" = dev ]; then echo debug; else echo "$1"; fi; }
issuer_bin=target/$musl_target/$(profile_dir $issuer_profile)/weauth-issuer
wasm=target/wasm32-wasip1/wasm-release/weauth_filter.wasm
native=target/$(profile_dir $native_profile)/libweauth_filter.so
out=target/oci
store=(--root "$root/target/buildah/root" --runroot "$root/target/buildah/run" --storage-driver vfs)

# DEBIAN_FRONTEND after sudo, which resets the environment.
apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
[ "$(id -u)" = 0 ] || apt=(sudo -n "${apt[@]}")
for pkg in buildah musl-tools ca-certificates; do
  if dpkg -s "$pkg" >/dev/null 2>&1; then
    continue
  fi
  echo "image: installing the Debian package $pkg"
  if "${apt[@]}" install -y "$pkg" || { "${apt[@]}" update && "${apt[@]}" install -y "$pkg"; }; then
    continue
  fi
  # Root can install, and so can a user with passwordless sudo: a failure there is a failure
  # (a mirror down, a held lock), not a skip that would let `make test` pass without its image
  # check.
  if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
    echo "image: cannot install the Debian package $pkg" >&2
    exit 3
  fi
  skip "cannot install the Debian package $pkg as $(id -un) (no root, no passwordless sudo)"
done
$tools_only && exit 0
if ! probe=$(buildah "${store[@]}" images 2>&1); then
  # Root has what buildah needs: a failure there is one (storage, policy.json, a container
  # without the capabilities), not a skip that would let `make test` pass without the check.
  [ "$(id -u)" = 0 ] && { echo "image: buildah cannot run as root: ${probe##*$'\n'}" >&2; exit 3; }
  skip "buildah cannot run here as $(id -un) (${probe##*$'\n'}); as a normal user it needs user namespaces and entries in /etc/subuid and /etc/subgid; run make image as root in a clone of its own (root's build files in this clone's target/ would stop this user's next make test)"
fi
# Rootless, buildah runs without subordinate ids too (it only warns), but then its user namespace
# maps nothing beyond the user's own id, and the images' files belong to 65532 (distroless's
# nonroot): the COPY --chown steps would fail half-way. Say so before building anything.
if [ "$(id -u)" != 0 ]; then
  for ids in /etc/subuid /etc/subgid; do
    if ! awk -F: -v name="$(id -un)" -v id="$(id -u)" \
      '($1 == name || $1 == id) && $3 > 65532 { found = 1 } END { exit !found }' "$ids" 2>/dev/null; then
      skip "buildah cannot build these images as $(id -un): $ids gives it no range of more than 65532 subordinate ids (the images' files belong to uid 65532); run make image as root in a clone of its own (root's build files in this clone's target/ would stop this user's next make test), or give the user a range once (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $(id -un))"
    fi
  done
fi
for rust_target in "$musl_target" wasm32-wasip1; do
  if ! rustup target list --installed | grep -qx "$rust_target"; then
    echo "image: installing rust target $rust_target"
    rustup target add "$rust_target"
  fi
done
wait_for() { # file: `make test`'s build copies it there when the build is done (it may still be
  # under way when this script starts)
  local waited=0
  until [ -f "$1" ]; do
    [ $waited -eq 0 ] && echo "image: waiting for $1 (make test's build)"
    [ $waited -lt 1800 ] || { echo "image: $1 did not appear within 30 min" >&2; exit 1; }
    sleep 2; waited=$((waited + 2))
  done
}
if $check && [ -n "${IMAGE_ISSUER_FROM:-}" ]; then
  issuer_bin=$IMAGE_ISSUER_FROM
  wait_for "$issuer_bin"
else
  cargo build ${CI:+--locked} --profile "$issuer_profile" --target "$musl_target" -p weauth-issuer
fi
if $check && [ -n "${IMAGE_NATIVE_FROM:-}" ]; then
  native=$IMAGE_NATIVE_FROM
  wait_for "$native"
else
  cargo build ${CI:+--locked} --profile "$native_profile" -p weauth-filter --features envoy-native
fi
cargo build ${CI:+--locked} --profile wasm-release --target wasm32-wasip1 -p weauth-filter
# ldd exits 1 for "not a dynamic executable": read its words, not its status (pipefail).
linkage=$(ldd "$issuer_bin" 2>&1 || true)
if ! grep -q -E 'statically linked|not a dynamic executable' <<<"$linkage"; then
  echo "image: $issuer_bin is dynamically linked; the image has no libc" >&2
  exit 1
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] || { echo "image: /etc/ssl/certs/ca-certificates.crt missing (Debian package ca-certificates)" >&2; exit 1; }

ctx=target/image-context
rm -rf "$ctx"
mkdir -p "$ctx/issuer/var-lib-weauth" "$ctx/filter" "$ctx/filter-native" "$out"
cp "$issuer_bin" "$ctx/issuer/weauth-issuer"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/issuer/ca-certificates.crt"
cp "$wasm" "$ctx/filter/plugin.wasm"
cp "$native" "$ctx/filter-native/libweauth_filter.so"

build() { # name containerfile context [bud options]
  local name=$1 file=$2 context=$3
  shift 3
  buildah "${store[@]}" bud --quiet --isolation chroot --format oci --timestamp 0 \
    "$@" -f "$file" -t "localhost/$name:$version" "$context" >/dev/null
  rm -rf "${out:?}/$name"
  buildah "${store[@]}" push --quiet --compression-format gzip --digestfile "$out/$name.digest" \
    "localhost/$name:$version" "oci:$out/$name:$version"
  buildah "${store[@]}" rmi "localhost/$name:$version" >/dev/null
  echo "image: $out/$name ($name:$version) $(cat "$out/$name.digest")"
}

build weauth-issuer deploy/images/issuer.Containerfile "$ctx/issuer"
build weauth-filter deploy/images/filter.Containerfile "$ctx/filter" \
  --annotation module.wasm.image/variant=compat
# The native build (an Envoy 1.40 dynamic module) for a volume mount (docs/DEPLOY.md).
build weauth-filter-native deploy/images/filter-native.Containerfile "$ctx/filter-native"
echo "image: push with e.g. skopeo copy oci:$out/weauth-filter:$version docker://REGISTRY/weauth/filter:$version"
echo "image: WasmPlugin sha256 (the filter's digest): $(sed 's/^sha256://' "$out/weauth-filter.digest")"
if $check; then
  WEAUTH_FILTER_WASM="$root/$wasm" WEAUTH_IMAGE_NATIVE="$(realpath "$native")" python3 scripts/check_images.py
fi
