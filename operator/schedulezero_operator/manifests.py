"""Reading Schedule and Handler YAML without a cluster, as the API server would.

Local mode accepts the same files as ``kubectl apply``. They are checked
against the CRDs' own OpenAPI schemas (unknown fields rejected, as kubectl's
strict validation does) and get the schemas' defaults. The rules the CRDs
express in CEL are the engine's own checks (``triggers.build_trigger``), so
they hold here too. One bad file costs only itself.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.resources
import pathlib
from typing import Any

import jsonschema
import yaml

API_VERSION = "schedulezero.io/v1alpha1"
KINDS = {"Schedule": "schedules.schedulezero.io.yaml", "Handler": "handlers.schedulezero.io.yaml"}


@dataclasses.dataclass(frozen=True)
class Resource:
    kind: str
    namespace: str
    name: str
    spec: dict[str, Any]
    source: str
    """File (and document number) it came from, for messages."""


class ManifestError(ValueError):
    """A document that is not a valid Schedule or Handler; the message names the file and the field."""


@functools.cache
def _crd_schema(kind: str) -> dict[str, Any]:
    text = importlib.resources.files("schedulezero_operator").joinpath("crds", KINDS[kind]).read_text()
    crd = yaml.safe_load(text)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields rejected wherever Kubernetes would prune them."""
    schema = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        if (
            node.get("type") == "object"
            and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node.setdefault("additionalProperties", False)
        for child in node.get("properties", {}).values():
            walk(child)
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(schema)
    return schema


@functools.cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(
        _strict(_crd_schema(kind)), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def _defaulted(value: Any, schema: dict[str, Any]) -> Any:
    """Fills in the schema's defaults, as the API server does."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    result = dict(value)
    for name, child in schema.get("properties", {}).items():
        if name not in result and "default" in child:
            result[name] = copy.deepcopy(child["default"])
        if name in result:
            result[name] = _defaulted(result[name], child)
    return result


def parse_document(document: Any, source: str) -> Resource:
    if not isinstance(document, dict):
        raise ManifestError(f"{source}: expected a mapping with apiVersion, kind, metadata and spec")
    kind = document.get("kind")
    if document.get("apiVersion") != API_VERSION or kind not in KINDS:
        raise ManifestError(
            f"{source}: expected apiVersion {API_VERSION} and kind Schedule or Handler, "
            f"got {document.get('apiVersion')!r} {kind!r}"
        )
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{source}: {kind} without metadata.name")
    namespace = str(metadata.get("namespace") or "default")
    spec = document.get("spec")
    errors = sorted(_validator(kind).iter_errors(spec), key=lambda e: list(e.absolute_path))
    if errors:
        problems = "; ".join(f"spec.{'.'.join(str(p) for p in e.absolute_path) or ''}: {e.message}" for e in errors[:5])
        raise ManifestError(f"{source}: {kind} {namespace}/{name} is invalid: {problems.replace('spec.:', 'spec:')}")
    return Resource(str(kind), namespace, name, _defaulted(spec, _crd_schema(kind)), source)


def load_file(path: pathlib.Path) -> tuple[list[Resource], list[str]]:
    """The valid resources in a file, and a message for each invalid document."""
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as error:
        return [], [f"{path}: not valid YAML: {error}"]
    resources, problems = [], []
    for index, document in enumerate(documents):
        if document is None:
            continue
        source = str(path) if len(documents) == 1 else f"{path}#{index + 1}"
        try:
            resources.append(parse_document(document, source))
        except ManifestError as error:
            problems.append(str(error))
    return resources, problems


def load_directory(directory: pathlib.Path) -> tuple[list[Resource], list[str]]:
    """Every Schedule and Handler in ``*.yaml``/``*.yml`` files of a directory, and the problems found."""
    resources: list[Resource] = []
    problems: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        found, file_problems = load_file(path)
        problems += file_problems
        for resource in found:
            identity = (resource.kind, resource.namespace, resource.name)
            if identity in seen:
                problems.append(
                    f"{resource.source}: {resource.kind} {resource.namespace}/{resource.name} "
                    f"is already defined in {seen[identity]}; ignoring this one"
                )
                continue
            seen[identity] = resource.source
            resources.append(resource)
    return resources, problems
