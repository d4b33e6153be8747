"""The Go wrapper modules in tools/k8s agree with the Kubernetes release they name."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "k8s"
sys.path.insert(0, str(TOOLS))
import generate  # noqa: E402


@pytest.fixture(scope="module")
def upstream_gomod() -> str:
    """The go.mod of the chosen k8s.io/kubernetes release, through the go tool's module cache."""
    version = generate.read_versions()["KUBERNETES_VERSION"]
    done = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        cwd=TOOLS / "kubernetes",
        capture_output=True,
        text=True,
        check=True,
    )
    return pathlib.Path(json.loads(done.stdout)["GoMod"]).read_text()


def test_every_staging_module_is_replaced_with_the_matching_tag(upstream_gomod: str) -> None:
    versions = generate.read_versions()
    wrapper = (TOOLS / "kubernetes" / "go.mod").read_text()
    replaced = dict(re.findall(r"^\s*(k8s\.io/\S+) => \1 (v\S+)$", wrapper, flags=re.MULTILINE))
    staging = {m for m, v in generate.required(upstream_gomod).items() if m.startswith("k8s.io/") and v == "v0.0.0"}
    assert len(staging) > 20
    assert set(replaced) == staging
    assert set(replaced.values()) == {generate.staging_version(versions["KUBERNETES_VERSION"])}
    assert f"k8s.io/kubernetes {versions['KUBERNETES_VERSION']}" in wrapper


def test_etcd_is_the_version_kubernetes_uses(upstream_gomod: str) -> None:
    versions = generate.read_versions()
    assert generate.required(upstream_gomod)["go.etcd.io/etcd/client/v3"] == versions["ETCD_VERSION"]
    assert f"go.etcd.io/etcd/server/v3 {versions['ETCD_VERSION']}" in (TOOLS / "etcd" / "go.mod").read_text()


def test_required_reads_blocks_and_single_lines() -> None:
    gomod = "module m\n\nrequire a.b/c v1.2.3\n\nrequire (\n\tk8s.io/api v0.0.0\n\tx.y/z v0.1.0 // indirect\n)\n"
    assert generate.required(gomod) == {"a.b/c": "v1.2.3", "k8s.io/api": "v0.0.0", "x.y/z": "v0.1.0"}
    assert generate.staging_version("v1.37.2") == "v0.37.2"


def test_the_wrapper_lists_every_binary_build_sh_builds_so_go_sum_covers_them() -> None:
    """go.sum is complete for a binary only if the module lists it as a tool: kubelet needs modules no other does."""
    wrapper = (TOOLS / "kubernetes" / "go.mod").read_text()
    tools = set(re.findall(r"^\s*k8s\.io/kubernetes/cmd/(\S+)$", wrapper, flags=re.MULTILINE))
    built = set(re.findall(r"build_kube (\S+)$", (TOOLS / "build.sh").read_text(), flags=re.MULTILINE))
    assert built == {"kube-apiserver", "kubectl", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy"}
    assert tools == built
    assert {f"k8s.io/kubernetes/cmd/{name}" for name in built} == set(generate.KUBERNETES_TOOLS)
    go_sum = (TOOLS / "kubernetes" / "go.sum").read_text()
    assert "github.com/google/cadvisor/lib " in go_sum  # one of the modules only kubelet needs
    # Go's own check: every package of every tool resolves from go.mod and go.sum alone, offline.
    done = subprocess.run(
        ["go", "list", "-mod=readonly", "-deps", *sorted(generate.KUBERNETES_TOOLS)],
        cwd=TOOLS / "kubernetes",
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=readonly", "GOPROXY": "off"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
