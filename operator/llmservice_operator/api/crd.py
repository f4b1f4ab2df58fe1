"""Generate the LLMService CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema 2020-12; a CRD needs a structural OpenAPI v3.0 schema: no $ref,
no anyOf-with-null, boolean exclusive bounds, no `title`, no `additionalProperties: false`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .. import GROUP, KIND, PLURAL, VERSION
from .rules import MAX_NAME_LENGTH, NAME_MESSAGE, NAME_PATTERN, RULES
from .spec import LLMServiceSpec
from .status import LLMServiceStatus

_DROP = {"title", "additionalProperties"}


def _structural(node: Any, defs: dict[str, Any], optional: bool = False) -> Any:
    """`optional`: the field may be absent (Optional[...]), so it gets no `default: {}`."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        # Field-level description/default win over the referenced model's docstring.
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return _structural(target, defs, optional)
    if "anyOf" in node:  # Optional[X]: X, not required (absence means null)
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            merged = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
            if merged.get("default", 0) is None:
                del merged["default"]
            return _structural(merged, defs, optional=True)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "$defs":
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
            continue
        out[key] = _structural(value, defs)
    if out.get("type") == "object" and "properties" in out and not out.get("required") and not optional:
        # Defaults of nested objects apply only when the object exists: default it to {} when
        # every field has a default, so the API server fills the whole tree.
        out.setdefault("default", {})
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out["type"] = "object"
    return out


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def spec_schema() -> dict[str, Any]:
    schema = _schema(LLMServiceSpec)
    schema["x-kubernetes-validations"] = [
        {"rule": r.cel, "message": f"{r.field} {r.message}", "fieldPath": f".{r.field}"}
        for r in RULES
        if r.cel is not None
    ]
    return schema


def status_schema() -> dict[str, Any]:
    schema = _schema(LLMServiceStatus)
    schema.pop("default", None)
    return schema


def crd() -> dict[str, Any]:
    # Why a service is where it is, at a glance (Reason); the line that says what to do with
    # `kubectl get -o wide` (Message).
    printer = [
        ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', 0),
        ("Phase", "string", ".status.phase", 0),
        ("Reason", "string", ".status.reason", 0),
        ("Model", "string", ".spec.model.name", 0),
        ("Accelerator", "string", ".spec.accelerator.type", 0),
        ("Replicas", "integer", ".status.replicas.ready", 0),
        ("Desired", "integer", ".status.replicas.desired", 0),
        ("Endpoint", "string", ".status.endpoint", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Message", "string", ".status.message", 1),
    ]
    columns = [{"name": n, "type": t, "jsonPath": p, **({"priority": i} if i else {})} for n, t, p, i in printer]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["llmsvc"],
                "categories": ["ai", "ray"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "LLMService turns one manifest into a Ray Serve LLM "
                            "endpoint on GKE: a KubeRay RayService running vLLM, HAProxy on the "
                            "request path, accelerator node pools and consistent autoscaling.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                                    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters",
                                },
                                {
                                    "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
                                    "message": f"metadata.name {NAME_MESSAGE}",
                                },
                            ],
                        }
                    },
                }
            ],
        },
    }


def kopf_peering_crds() -> list[dict[str, Any]]:
    """The CRDs kopf's peering (leader election between operator replicas) reads and writes:
    kopf keeps each replica's priority and heartbeat in the peering object's `status`."""
    out = []
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        plural = kind.lower() + "s"
        schema = {
            "type": "object",
            "properties": {
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "scope": scope,
                    "versions": [
                        {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
                    ],
                },
            }
        )
    return out
