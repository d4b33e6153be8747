"""The source layout: three source roots, and dependencies that point one way."""

from __future__ import annotations

import importlib
import json
import operator
import pathlib
import subprocess
import sys
import sysconfig
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("schedulezero_operator", "schedulezero_handler", "schedulezero_conductor")


def test_operator_is_the_standard_library_module() -> None:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert pathlib.Path(operator.__file__).resolve().parent == stdlib
    assert operator.add(2, 3) == 5
    assert not (REPO / "operator" / "__init__.py").exists()


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert pathlib.Path(module.__file__).parent.name == package


def loaded_modules(statement: str) -> set[str]:
    code = f"{statement}; import json, sys; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return {name.split(".")[0] for name in json.loads(done.stdout)}


def test_handler_runtime_stays_light() -> None:
    """A vendor's handler package must not drag in the operator's dependencies."""
    loaded = loaded_modules("import schedulezero_handler, schedulezero_handler.cli")
    heavy = {
        "kopf",
        "kubernetes",
        "apscheduler",
        "prometheus_client",
        "aiohttp",
        "schedulezero_operator",
        "schedulezero_conductor",
    }
    assert loaded & heavy == set()


def test_console_script_reports_the_version() -> None:
    script = pathlib.Path(sys.executable).parent / "schedulezero"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    # The version the source declares, not the one the installed package reports about itself: a stale
    # install (pyproject changed, `make venv` not rerun) shows here.
    declared = tomllib.loads((pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["version"]
    assert done.stdout.split() == ["schedulezero", declared]
