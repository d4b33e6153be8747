#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kubectl, etcd, helm) that the
# e2e tests run, and the node (kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy) that `make cluster` and the node tests run, unless the cache already holds it, and fetches the
# prometheus-operator CRDs the chart's monitoring objects are checked against.
#
# Binaries are cached by version outside the source tree, in
#   ${SCHEDULEZERO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/schedulezero/k8s}/<name>-<version>/
# so a fresh checkout reuses them and a version bump builds beside the old one.
# Each binary is built into a temporary directory and moved into place only
# when it works, so an interrupted build never leaves a broken cache entry.
#
# Prints the bin directory holding all of them on its last line of stdout;
# progress goes to stderr. With SCHEDULEZERO_BUILD_QUIET=1 only a build's own
# progress does: nothing is said when everything is cached (make cluster).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${SCHEDULEZERO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/schedulezero/k8s}
bin="$cache/bin-$KUBERNETES_VERSION-$ETCD_VERSION-$HELM_VERSION"
mkdir -p "$cache" "$bin"

command -v go >/dev/null || { echo "build.sh: the go tool is needed to build the control plane" >&2; exit 1; }

kube_minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

log() { printf '[k8s-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# What the cache holds: said unless SCHEDULEZERO_BUILD_QUIET is set.
note() { [ -n "${SCHEDULEZERO_BUILD_QUIET:-}" ] || log "$@"; }

# Runs "$@" while printing the elapsed time every 30 s, so a cold build of
# several minutes visibly makes progress.
with_progress() {
  local name=$1; shift
  local start=$SECONDS
  ( while sleep 30; do log "$name: still building, $((SECONDS - start)) s"; done ) &
  local ticker=$!
  local status=0
  "$@" || status=$?
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then log "$name: built in $((SECONDS - start)) s"; else log "$name: FAILED after $((SECONDS - start)) s"; fi
  return "$status"
}

# ensure NAME VERSION CHECK-ARGS -- BUILD-COMMAND...
# BUILD-COMMAND gets the output directory in $out.
ensure() {
  local name=$1 version=$2 check=$3; shift 4
  local dest="$cache/$name-$version"
  if [ -x "$dest/$name" ] && "$dest/$name" $check >/dev/null 2>&1; then
    note "$name $version: cached in $dest"
  else
    log "$name $version: building (a cold build takes minutes)"
    local tmp
    tmp=$(mktemp -d "$cache/.build-$name-XXXXXX")
    out=$tmp with_progress "$name $version" "$@" || { rm -rf "$tmp"; exit 1; }
    "$tmp/$name" $check >/dev/null
    rm -rf "$dest"; mv "$tmp" "$dest"
  fi
  ln -sf "$dest/$name" "$bin/$name"
}

kube_ldflags() {
  local flags="-s -w" pkg key value
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for pair in "gitVersion=$KUBERNETES_VERSION" gitMajor=1 "gitMinor=$kube_minor" \
                gitTreeState=clean "buildDate=$build_date" "gitCommit=$KUBERNETES_VERSION"; do
      key=${pair%%=*}; value=${pair#*=}
      flags+=" -X $pkg.$key=$value"
    done
  done
  echo "$flags"
}

build_kube() {
  (cd "$here/kubernetes" && go build -trimpath -ldflags "$(kube_ldflags)" -o "$out/$1" "k8s.io/kubernetes/cmd/$1")
}

build_etcd() {
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
}

# helm's own Makefile stamps its version and the Kubernetes version it assumes
# for `helm template` and lint (.Capabilities.KubeVersion) into these variables.
build_helm() {
  local flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kube_minor"
  done
  GOBIN=$out go install -trimpath -ldflags "$flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

ensure etcd "$ETCD_VERSION" --version -- build_etcd
ensure kube-apiserver "$KUBERNETES_VERSION" --version -- build_kube kube-apiserver
ensure kubectl "$KUBERNETES_VERSION" "version --client" -- build_kube kubectl
ensure helm "$HELM_VERSION" version -- build_helm
# The node that `make cluster` and the node tests run: same module, same version, same cache.
ensure kubelet "$KUBERNETES_VERSION" --version -- build_kube kubelet
ensure kube-controller-manager "$KUBERNETES_VERSION" --version -- build_kube kube-controller-manager
ensure kube-scheduler "$KUBERNETES_VERSION" --version -- build_kube kube-scheduler
ensure kube-proxy "$KUBERNETES_VERSION" --version -- build_kube kube-proxy

# The prometheus-operator CRDs (ServiceMonitor, PrometheusRule) are YAML in its
# Go module; the module proxy serves them like source.
monitoring_crds() {
  local dest="$cache/monitoring-crds-$PROMETHEUS_OPERATOR_VERSION" dir tmp
  if [ ! -s "$dest/monitoring.coreos.com_servicemonitors.yaml" ]; then
    log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION: fetching its CRDs"
    dir=$(cd "$here/kubernetes" && go mod download -json \
      "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -n "$dir" ] || { log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION: download FAILED"; exit 1; }
    tmp=$(mktemp -d "$cache/.fetch-monitoring-XXXXXX")
    for kind in servicemonitors prometheusrules; do
      cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$tmp/"
    done
    chmod 644 "$tmp"/*.yaml; rm -rf "$dest"; mv "$tmp" "$dest"
  fi
  ln -sfn "$dest" "$bin/monitoring-crds"
}
monitoring_crds

note "kube-apiserver: $("$bin/kube-apiserver" --version)"
note "etcd: $("$bin/etcd" --version | head -n 1)"
note "helm: $("$bin/helm" version --short)"
echo "$bin"
