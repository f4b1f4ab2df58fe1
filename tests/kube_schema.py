"""Check objects against a CRD's openAPIV3Schema the way the API server would, plus the one
thing it does silently: pruning unknown fields (a typo in the renderer would just vanish)."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]


def kuberay_crd(name: str) -> dict[str, Any]:
    """A KubeRay CRD straight from the pinned Go module (downloaded at test time, never committed)."""
    pin = tomllib.loads((ROOT / "e2e" / "versions.toml").read_text())["kuberay"]
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{pin['module']}@{pin['version']}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    path = Path(json.loads(out)["Dir"]) / "config" / "crd" / "bases" / f"ray.io_{name}.yaml"
    return yaml.safe_load(path.read_text())


def open_api_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(version)


_META = {"name", "namespace", "labels", "annotations", "generateName", "finalizers"}


def pruned_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if path.endswith(".metadata") and "properties" not in schema:
        # Embedded ObjectMeta: the server keeps these and prunes anything else.
        return [f"{path}.{k}" for k in obj if k not in _META]
    out: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                out += pruned_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += pruned_fields(value, extra, f"{path}.{key}")
            elif (props is not None or path) and not (path == "" and key in ("apiVersion", "kind", "metadata")):
                out.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out += pruned_fields(item, schema["items"], f"{path}[{i}]")
    return out


def check(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every problem: schema violations (with their path) and fields the server would prune."""
    problems = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft4Validator(schema).iter_errors(obj)
    ]
    return problems + [f"{p}: unknown field (the API server would drop it)" for p in pruned_fields(obj, schema)]
