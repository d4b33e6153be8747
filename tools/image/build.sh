#!/usr/bin/env bash
# Builds the ScheduleZero image and the example vendor image with buildah, for the tests:
#   localhost/schedulezero:test          from Dockerfile
#   localhost/acme-processor-handler:test from examples/acme-processor-handler/Dockerfile, FROM the first
# No registry is reachable here, so the Dockerfile's python:3.x-slim-bookworm base is stood in for by a
# Debian bookworm minbase with its python3, made once with debootstrap and kept (by its inputs) in
# buildah's store; the Dockerfiles themselves are unchanged and take their base as a build argument.
# The build trusts this machine's CA bundle and pip configuration through read-only mounts that are
# not part of any layer. Storage: vfs, isolation: chroot (no daemon, no overlay needed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
suite=bookworm
packages=python3,python3-venv,ca-certificates
base_tag=$(printf '%s %s' "$suite" "$packages" | sha256sum | cut -c1-12)
base="localhost/schedulezero-python-base:$base_tag"
buildah=(buildah --storage-driver vfs)
log() { printf '[image-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Builds use the host's network: buildah's own would leave a cni-podman0 bridge (10.88.0.1/16)
# behind, which is removed all the same should one appear that was not there before.
bridge_before=$(ip -o link show cni-podman0 2>/dev/null || true)
rootfs=""
cleanup() {
  [ -z "$rootfs" ] || rm -rf "$rootfs" "$rootfs.log"
  [ -n "$bridge_before" ] || ip link delete cni-podman0 2>/dev/null || true
}
trap cleanup EXIT

for tool in buildah debootstrap unshare chroot; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is needed (make debs installs it)" >&2; exit 1; }
done

if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  log "base image $base: debootstrap $suite minbase with $packages (about a minute)"
  rootfs=$(mktemp -d /tmp/schedulezero-base-XXXXXX)
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" http://deb.debian.org/debian \
    > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  ln -sf python3 "$rootfs/usr/bin/python"  # as python:*-slim images have it
  container=$("${buildah[@]}" from scratch)
  "${buildah[@]}" copy "$container" "$rootfs" / >/dev/null
  "${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$container"
  "${buildah[@]}" commit -q --rm "$container" "$base" >/dev/null
else
  log "base image $base: cached"
fi

trust=(--network host --volume /etc/ssl/certs:/etc/ssl/certs:ro)
[ -f /etc/pip.conf ] && trust+=(--volume /etc/pip.conf:/etc/pip.conf:ro)
log "localhost/schedulezero:test from Dockerfile"
"${buildah[@]}" bud --quiet --isolation chroot --layers=false "${trust[@]}" \
  --build-arg "PYTHON_IMAGE=$base" -t localhost/schedulezero:test -f "$repo/Dockerfile" "$repo" >/dev/null
log "localhost/acme-processor-handler:test FROM it"
"${buildah[@]}" bud --quiet --isolation chroot --layers=false "${trust[@]}" \
  --build-arg SCHEDULEZERO_IMAGE=localhost/schedulezero:test -t localhost/acme-processor-handler:test \
  "$repo/examples/acme-processor-handler" >/dev/null
"${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
log "done"
