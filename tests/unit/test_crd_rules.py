"""The Schedule CRD holds exactly the validation rules ``tools/crd_rules.py`` generates from the parser's grammar."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import yaml

TOOL = pathlib.Path(__file__).parents[2] / "tools" / "crd_rules.py"


def test_the_crd_rules_are_the_generated_ones() -> None:
    spec = importlib.util.spec_from_file_location("crd_rules", TOOL)
    assert spec is not None
    assert spec.loader is not None
    crd_rules = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = crd_rules  # its dataclasses look their module up there
    spec.loader.exec_module(crd_rules)
    crd = yaml.safe_load(crd_rules.CRD.read_text())
    fields = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for name, rules in crd_rules.rules().items():
        assert fields[name]["x-kubernetes-validations"] == rules, f"{name}: run tools/crd_rules.py"
    assert crd_rules.write(crd_rules.CRD.read_text()) == crd_rules.CRD.read_text()
