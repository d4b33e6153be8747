# `make demo` sets up the project and runs the demo; `make test` sets up
# everything the tests need on a fresh machine, then runs every check.
# Set-up steps are idempotent and cheap when already done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests use: promtool and prometheus for the metrics tests,
# ip for the handler-replica tests' pod addresses, buildah and debootstrap to
# build the images the tests run; the node's container runtime (containerd,
# runc), pause process (catatonit), pod network (CNI plugins) and kube-proxy's
# tools (iptables, conntrack).
DEB_PACKAGES := prometheus iproute2 buildah debootstrap \
	containerd runc catatonit containernetworking-plugins iptables conntrack

.PHONY: demo test test-node setup venv debs control-plane image cluster cluster-down lint typecheck pytest manifests clean

test: setup lint typecheck pytest

# The example handler and the Schedules of examples/demo/, in local mode; Ctrl-C stops it.
demo: venv
	$(BIN)/schedulezero demo

setup: venv debs control-plane image

# Reinstalled only when pyproject.toml changes.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Builds kube-apiserver, kubectl, etcd, helm and the node's kubelet,
# kube-controller-manager, kube-scheduler and kube-proxy once, cached by version outside the tree.
control-plane:
	@tools/k8s/build.sh >/dev/null

# The ScheduleZero image and the example vendor image, built with buildah (the base
# once, then about a minute); tests/e2e/test_image.py runs them.
image: debs
	@tools/image/build.sh

# A local one-node cluster (etcd, kube-apiserver, containerd, kubelet, kube-controller-manager,
# kube-scheduler, kube-proxy) with the CRDs and the built images, to helm install ScheduleZero on:
# eval "$(make -s cluster)" sets KUBECONFIG (and PATH for kubectl and helm); make cluster-down
# removes everything it made. Needs root. Only a build's progress is shown (make -s cluster
# prints nothing else when it is cached).
cluster: venv debs
	@bin=$$(SCHEDULEZERO_BUILD_QUIET=1 tools/k8s/build.sh) && SCHEDULEZERO_K8S_BIN=$$bin $(BIN)/python tools/k8s/cluster.py up

cluster-down: venv
	@$(BIN)/python tools/k8s/cluster.py down

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# The e2e fixture finds the control plane in the build cache; tools/k8s/build.sh
# prints its directory, handed over here so both agree on where it is.
pytest: venv control-plane
	bin=$$(tools/k8s/build.sh 2>/dev/null) && SCHEDULEZERO_K8S_BIN=$$bin $(BIN)/pytest $(PYTEST_ARGS)

# The node tier alone (tests/node/, also part of make test): ScheduleZero installed with helm on a
# one-node cluster of its own.
test-node: setup
	$(MAKE) pytest PYTEST_ARGS=tests/node

# manifests/ for kubectl users, rendered from charts/schedulezero (whose crds/
# and files/ are refreshed from the operator's CRDs and monitoring/ first).
manifests: venv control-plane
	bin=$$(tools/k8s/build.sh 2>/dev/null) && $(BIN)/python tools/render_manifests.py $$bin/helm

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
