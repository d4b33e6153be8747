"""Reading Schedule and Handler YAML without a cluster, as the API server would.

Local mode accepts the same files as ``kubectl apply``. They are checked
against the CRDs' own OpenAPI schemas (unknown fields rejected, as kubectl's
strict validation does) and get the schemas' defaults. The rules the CRDs
express in CEL hold here too: those on the schedule and its times are the
engine's own checks (``triggers.build_trigger``, which the CEL was written
from), the others are checked here. One bad file costs only itself: whatever a file holds
(bytes that are not UTF-8, YAML that expands without bound, values JSON has no
type for), it is reported by name and the others load.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.resources
import pathlib
import re
from typing import Any

import jsonschema
import yaml

from schedulezero_handler import protocol

API_VERSION = "schedulezero.io/v1alpha1"
MAX_FILE_SIZE = 1024 * 1024
"""As large as an object the API server stores (its limit is about 1.5 MiB per request)."""
MAX_DEPTH = 100
"""Brackets a document may nest: PyYAML takes seconds to refuse a few thousand, far past any resource."""
MAX_EXPANDED_NODES = 100_000
"""YAML nodes a document may expand to through aliases; a few anchors can otherwise stand for gigabytes."""
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
"""metadata.name: a DNS subdomain, as Kubernetes requires of custom resources."""
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
"""metadata.namespace: a DNS label."""
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


MAX_QUOTE = 200
"""Characters of a value quoted in a message: a message names what is wrong, it does not repeat it."""


def _cut(text: str) -> str:
    return text if len(text) <= MAX_QUOTE else text[:MAX_QUOTE] + "…"


def _quote(value: Any) -> str:
    return _cut(repr(value))


def _check_metadata(kind: str, namespace: Any, name: Any, source: str) -> None:
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{source}: {kind} without metadata.name")
    if len(name) > 253 or not NAME.fullmatch(name):
        raise ManifestError(
            f"{source}: {kind} metadata.name {name[:64]!r} must be lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters"
        )
    if not isinstance(namespace, str) or len(namespace) > 63 or not NAMESPACE.fullmatch(namespace):
        raise ManifestError(
            f"{source}: {kind} metadata.namespace {str(namespace)[:64]!r} must be lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )


def parse_document(document: Any, source: str) -> Resource:
    if not isinstance(document, dict):
        raise ManifestError(f"{source}: expected a mapping with apiVersion, kind, metadata and spec")
    kind, api_version = document.get("kind"), document.get("apiVersion")
    if api_version != API_VERSION or not isinstance(kind, str) or kind not in KINDS:
        raise ManifestError(
            f"{source}: expected apiVersion {API_VERSION} and kind Schedule or Handler, "
            f"got {_quote(api_version)} {_quote(kind)}"
        )
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ManifestError(f"{source}: {kind} metadata must be a mapping")
    name, namespace = metadata.get("name"), metadata.get("namespace") or "default"
    _check_metadata(str(kind), namespace, name, source)
    spec = document.get("spec")
    try:  # what kubectl would send is JSON: a date, a set or bytes are not
        protocol.check_json(spec, "spec")
    except TypeError as error:
        hint = "; quote it to pass it as a string" if " is a date" in str(error) else ""
        raise ManifestError(f"{source}: {kind} {namespace}/{name} is invalid: {error}{hint}") from None
    errors = sorted(_validator(kind).iter_errors(spec), key=lambda e: list(e.absolute_path))
    if errors:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in e.absolute_path) or ''}: {_cut(e.message)}" for e in errors[:5]
        )
        raise ManifestError(f"{source}: {kind} {namespace}/{name} is invalid: {problems.replace('spec.:', 'spec:')}")
    defaulted = _defaulted(spec, _crd_schema(kind))
    broken = _broken_rule(str(kind), defaulted)
    if broken is not None:
        raise ManifestError(f"{source}: {kind} {namespace}/{name} is invalid: {broken}")
    return Resource(str(kind), str(namespace), str(name), defaulted, source)


def _broken_rule(kind: str, spec: dict[str, Any]) -> str | None:
    """The CRDs' CEL rules that are not the engine's own checks, as the API server applies them (after
    defaulting); those on the schedule and its times are ``triggers.build_trigger``'s, applied by the engine."""
    if kind == "Handler" and ("endpoint" in spec) == ("service" in spec):
        return "spec: set exactly one of spec.endpoint or spec.service"
    if kind == "Handler" and spec.get("security") == "plaintext" and "curve" in spec:
        return "spec: spec.security plaintext and spec.curve contradict each other; set one of them"
    issued = "curve" not in spec and spec.get("security") != "plaintext"
    if kind == "Handler" and "rotationInterval" in spec and not issued:
        return (
            "spec: spec.rotationInterval rotates issued keys only; it cannot go with spec.curve or spec.security "
            "plaintext"
        )
    retry = spec.get("retry") or {}
    bounded = kind == "Schedule" and "maxBackoffSeconds" in retry and "backoffSeconds" in retry
    if bounded and retry["maxBackoffSeconds"] < retry["backoffSeconds"]:
        return "spec.retry: retry.maxBackoffSeconds must be at least retry.backoffSeconds"
    return None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand beyond ``MAX_EXPANDED_NODES``.

    Aliases share nodes, so loading is cheap; it is every later copy (JSON, the
    wire) that pays for the expansion. Counting the expanded nodes is linear in
    the document, as each shared node's count is computed once.
    """

    def compose_document(self) -> yaml.Node | None:
        """The document, or one that stands for its refusal: the file's other documents still load."""
        node: yaml.Node | None = super().compose_document()
        if node is None:
            return None
        try:
            if _expanded_size(node, {}, "") > MAX_EXPANDED_NODES:
                raise yaml.YAMLError(f"its aliases expand to more than {MAX_EXPANDED_NODES} nodes")
        except yaml.YAMLError as error:
            return yaml.ScalarNode(REFUSED_TAG, str(error), node.start_mark, node.end_mark)
        return node


REFUSED_TAG = "!schedulezero/refused"


@dataclasses.dataclass(frozen=True)
class _Refused:
    """A document the loader refused, with why."""

    why: str


_Loader.add_constructor(REFUSED_TAG, lambda loader, node: _Refused(str(node.value)))


_VISITING = -1


def _expanded_size(node: yaml.Node, sizes: dict[int, int], path: str) -> int:
    """The nodes ``node`` stands for once its aliases are expanded; ``path`` names it in messages."""
    known = sizes.get(id(node))
    if known == _VISITING:  # JSON has no value that contains itself
        raise yaml.YAMLError(
            f"{path or 'the document'} refers to itself through an alias (line {node.start_mark.line + 1})"
        )
    if known is not None:
        return known
    sizes[id(node)] = _VISITING
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, f"{path}[{i}]") for i, child in enumerate(node.value))
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            size += _expanded_size(key, sizes, path) + _expanded_size(value, sizes, f"{path}.{name}".lstrip("."))
    sizes[id(node)] = size
    return size


_QUOTED_OR_COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'|#[^\n]*')
_BRACKET = re.compile(r"[\[\]{}]")


_KEY_BEFORE = re.compile(r"([^\s:{}\[\],]+)\s*:\s*$")


def too_deep(text: str) -> str | None:
    """Which flow collection nests deeper than ``MAX_DEPTH`` (outside quoted strings and comments), named by
    the key it is the value of; None if none does."""
    plain = _QUOTED_OR_COMMENT.sub("", text)
    depth, outermost = 0, 0
    for bracket in _BRACKET.finditer(plain):
        if bracket[0] in "[{":
            if depth == 0:
                outermost = bracket.start()
            depth += 1
            if depth > MAX_DEPTH:
                key = _KEY_BEFORE.search(plain, plain.rfind("\n", 0, outermost) + 1, outermost)
                where = f"{key[1]}: " if key else ""
                return f"{where}brackets nested more than {MAX_DEPTH} deep"
        else:
            depth = max(0, depth - 1)
    return None


def _read(path: pathlib.Path) -> list[Any]:
    """The file's YAML documents; ManifestError names the file and what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ManifestError(f"{path}: cannot read: {error.strerror}") from None
    if len(data) > MAX_FILE_SIZE:
        raise ManifestError(f"{path}: {len(data)} bytes, more than the {MAX_FILE_SIZE} a resource file may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None
    deep = too_deep(text)
    if deep is not None:
        raise ManifestError(f"{path}: not valid YAML: {deep}")
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not valid YAML: {error}") from None
    except RecursionError:
        raise ManifestError(f"{path}: not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as error:  # a tagged scalar PyYAML cannot construct
        raise ManifestError(f"{path}: not valid YAML: {error}") from None


def load_file(path: pathlib.Path) -> tuple[list[Resource], list[str]]:
    """The valid resources in a file, and a message for each invalid document."""
    try:
        documents = _read(path)
    except ManifestError as error:
        return [], [str(error)]
    resources, problems = [], []
    for index, document in enumerate(documents):
        if document is None:
            continue
        source = str(path) if len(documents) == 1 else f"{path}#{index + 1}"
        if isinstance(document, _Refused):
            problems.append(f"{source}: not valid YAML: {document.why}")
            continue
        try:
            resources.append(parse_document(document, source))
        except ManifestError as error:
            problems.append(str(error))
        except RecursionError:
            problems.append(f"{source}: nested too deeply")
        except Exception as error:  # whatever else a document holds costs only itself
            problems.append(f"{source}: not a valid resource: {type(error).__name__}: {_cut(str(error))}")
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
