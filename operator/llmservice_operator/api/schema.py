"""Check a manifest against the generated CRD's structural schema as the API server does.

`kubectl apply` sends the object with strict field validation; the API server then refuses
unknown fields (camelCase only: `max_model_len` is unknown), values of the wrong JSON type
("10" is not an integer, "true" is not a boolean; 2.0 is an integer), and anything outside
the schema's enums, patterns and bounds, before any CEL rule runs. This module applies the
very schema `llmservice crd` prints, with the same semantics, so `llmservice validate` and the
operator give the API server's verdict (then the rules table gives the CEL verdict).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
from jsonschema import Draft4Validator
from pydantic.alias_generators import to_camel

from .pod_rules import KEY_MESSAGE, LABEL_KEY, LABEL_VALUE, VALUE_MESSAGE
from .rule import FieldError

# Go's regexp (RE2) as Python sees it: `$` only at the very end (Python's also matches before
# a final newline) and ASCII classes (`\w` is [0-9A-Za-z_], not every letter).
_END = re.compile(r"(?<!\\)\$")


@functools.cache  # a handful of patterns, checked for every field of every document
def re2(pattern: str) -> re.Pattern[str]:
    return re.compile(_END.sub(r"\\Z", pattern), re.ASCII)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if isinstance(instance, str) and not re2(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _integer(checker: Any, instance: Any) -> bool:
    # The loader has already made 2.0 the integer 2, as the JSON decoder does.
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    Draft4Validator,  # OpenAPI v3.0 schemas keep draft 4's boolean exclusiveMinimum/Maximum
    validators={"pattern": _pattern},
    type_checker=Draft4Validator.TYPE_CHECKER.redefine("integer", _integer),
)

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
# ObjectMeta as the API server decodes it: these fields, these types (strict: others unknown).
_METADATA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{f: {"type": "string"} for f in ("name", "generateName", "namespace", "uid", "resourceVersion")},
        **{f: {"type": "string"} for f in ("selfLink", "creationTimestamp", "deletionTimestamp")},
        "generation": {"type": "integer"},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "labels": _STRINGS,
        "annotations": _STRINGS,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    },
}


def _closed(node: Any) -> Any:
    """Objects with declared properties refuse others (strict field validation)."""
    if isinstance(node, list):
        return [_closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    open_ = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_:
        out["additionalProperties"] = False
    return out


@functools.cache
def _schema() -> dict[str, Any]:
    from .crd import crd  # crd imports this module's users; import late

    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return _closed({**root, "properties": {**root["properties"], "metadata": _METADATA}})


@functools.cache
def _validator() -> Any:
    return _Validator(_schema())


def prune_nulls(doc: Any, schema: dict[str, Any] | None = None) -> Any:
    """Drop `field: null` where the schema declares the field, as the API server does for
    fields that are not nullable (unknown fields stay, to be reported)."""
    schema = _schema() if schema is None else schema
    if isinstance(doc, list):
        items = schema.get("items", {})
        return [prune_nulls(v, items) for v in doc]
    if not isinstance(doc, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return doc
    props, extra = schema.get("properties", {}), schema.get("additionalProperties")
    out = {}
    for k, v in doc.items():
        sub = props.get(k, extra if isinstance(extra, dict) else None)
        if sub is None:
            out[k] = v  # unknown: reported by schema_errors
        elif v is not None:
            out[k] = prune_nulls(v, sub)
    return out


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _type_name(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _message(e: jsonschema.ValidationError) -> str:
    v, want, got = e.validator, e.validator_value, e.instance
    if v == "type":
        hint = ""
        if isinstance(got, str) and want in ("integer", "number", "boolean"):
            hint = f": write {got} without quotes" if got.strip() else ""
        return f"must be of type {want}, got {_type_name(got)}{hint}"
    if v == "enum":
        return f"must be one of: {', '.join(map(str, want))} (got {got!r})"
    if v in ("minimum", "maximum"):
        exclusive = e.schema.get("exclusiveMinimum" if v == "minimum" else "exclusiveMaximum")
        op = (">" if v == "minimum" else "<") + ("" if exclusive else "=")
        return f"must be {op} {want} (got {got})"
    if v == "maxLength":
        return f"must be at most {want} characters"
    if v == "minLength":
        return f"must be at least {want} characters"
    if v in ("maxProperties", "maxItems"):
        return f"must have at most {want} entries"
    return e.message


def _unknown(e: jsonschema.ValidationError) -> Iterator[FieldError]:
    known = e.schema.get("properties", {})
    for key in sorted(set(e.instance) - set(known)):
        fix = "remove it or check its spelling"
        if (camel := to_camel(key)) in known:
            fix = f"fields are camelCase: write {camel}"
        yield FieldError(_path([*e.absolute_path, key]), f"unknown field: {fix}")


def schema_errors(doc: dict[str, Any]) -> list[FieldError]:
    """Every place `doc` (nulls already pruned) breaks the CRD's structural schema."""
    out: list[FieldError] = []
    for e in _validator().iter_errors(doc):
        if e.validator == "additionalProperties" and e.validator_value is False:
            out += _unknown(e)
        elif e.validator == "required":
            missing = e.message.split("'")[1]
            out.append(FieldError(_path([*e.absolute_path, missing]), "is required"))
        else:
            out.append(FieldError(_path(e.absolute_path) or "(document)", _message(e)))
    meta = doc.get("metadata")
    if isinstance(meta, dict):
        out += _meta_map_errors(meta)
    return sorted(set(out), key=lambda f: f.path)


def _meta_map_errors(meta: dict[str, Any]) -> list[FieldError]:
    """Label and annotation syntax, which ObjectMeta validation checks."""
    out = []
    for field in ("labels", "annotations"):
        entries = meta.get(field)
        if not isinstance(entries, dict):
            continue
        for key, value in entries.items():
            if not re2(LABEL_KEY).match(key):
                out.append(FieldError(f"metadata.{field}", f"key {key!r}: {KEY_MESSAGE}"))
            if field == "labels" and isinstance(value, str) and not re2(LABEL_VALUE).match(value):
                out.append(FieldError(f"metadata.labels.{key}", f"value {VALUE_MESSAGE}"))
    return out
