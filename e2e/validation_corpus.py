"""A corpus of hand-style edits to the samples, each one YAML document, for checking that
`llmservice validate` gives the API server's verdict (accept or reject) on every one.

Edits a person makes by hand: a field spelled snake_case, a number in quotes, a boolean
written `yes`, `y` or "true", a float where an integer goes, a name with a dot, a value
removed or set to null, a key written twice; and the rules' own edge cases
(tests/test_validation.py). Deterministic: the same corpus every run.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from llmservice_operator.api.crd import crd
from tests.conftest import sample_doc, with_spec
from tests.test_validation import CASES, GOOD_CASES

ROOT = Path(__file__).resolve().parents[1]
# CPU, GPU with LoRA and prefix-aware routing, spot with fallback, prefill/decode, multi-host TPU.
SAMPLES = [
    "cpu-tiny.yaml",
    "prefix-aware-lora.yaml",
    "l4-spot-fallback.yaml",
    "prefill-decode.yaml",
    "tpu-v6e-4x4-multihost.yaml",
]

# Plain scalars whose meaning YAML dialects disagree on, written into a bool, int and string field.
TOKENS = [
    "y", "n", "yes", "No", "on", "OFF", "true", "True", "tRue", '"true"', "'yes'", "1", "0", "~", "null", "''",
    "2", "2.0", "2.5", "1e1", "'2'", "0x2", "02", "08", "0o2", "0b10", "1_0", "+2", "-1", ".5", "2e0",
    "9223372036854775807", "9223372036854775808", "1:10", "2024-01-01", "1e", "abc", "[]", "{}",
]  # fmt: skip


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, node


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any, rename: str | None = None) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    for p in path[:-1]:
        node = node[p]
    if rename is not None:
        node[rename] = node.pop(path[-1])
    else:
        node[path[-1]] = value
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _wrong_types(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return [str(value).lower(), "yes", int(value), None]
    if isinstance(value, int):
        return [str(value), value + 0.5, float(value), -value - 1, 10**19, True, None]
    if isinstance(value, float):
        return [str(value), 1, 0, 2, True]
    if isinstance(value, str):
        return [5, True, "", value.upper(), value + "\n", value + " ", [value], None]
    if isinstance(value, list):
        return [value[0] if value else "x", [None], None]
    return []


def _edited_samples() -> Iterator[tuple[str, str]]:
    for sample in SAMPLES:
        base = sample_doc(sample)
        yield f"{sample}: as written", _dump(base)
        for path, value in _leaves(base["spec"], ("spec",)):
            dotted = ".".join(path)
            if _snake(path[-1]) != path[-1]:
                yield f"{sample}: {dotted} spelled snake_case", _dump(_set(base, path, None, rename=_snake(path[-1])))
            for bad in _wrong_types(value):
                yield f"{sample}: {dotted} = {bad!r}", _dump(_set(base, path, bad))
        for parent in ("spec", "spec.engine", "spec.replicas", "metadata"):
            path = (*parent.split("."), "colour")
            if isinstance(_get(base, path[:-1]), dict):
                yield f"{sample}: unknown {parent}.colour", _dump(_set(base, path, "blue"))


def _get(doc: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        doc = doc.get(p) if isinstance(doc, dict) else None
    return doc


def _snake_case_fields() -> Iterator[tuple[str, str]]:
    """Every camelCase field of the schema, written snake_case with a value of its type."""
    values = {"integer": 2, "number": 0.5, "boolean": True, "string": "x", "object": {}, "array": []}

    def walk(schema: dict[str, Any], path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        for name, sub in schema.get("properties", {}).items():
            if _snake(name) != name:
                yield (*path, _snake(name), sub.get("type", "object"))
            if sub.get("type") == "object" and len(path) < 3:
                yield from walk(sub, (*path, name))

    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    base = sample_doc("gemma-b200.yaml")
    for *path, kind in walk(spec, ("spec",)):
        doc = copy.deepcopy(base)
        node = doc
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = values[kind]
        yield f"snake_case {'.'.join(path)}", _dump(doc)


def _yaml_tokens() -> Iterator[tuple[str, str]]:
    text = (ROOT / "manifests" / "samples" / "cpu-tiny.yaml").read_text()
    for token in TOKENS:
        for field in ("suspend", "replicas: {min: 1, max: %s}", "ray:\n    env: {A: %s}"):
            line = f"  {field % token}" if "%" in field else f"  {field}: {token}"
            if field.startswith("ray"):  # cpu-tiny has a ray section: add env inside it
                yield f"ray.env.A: {token}", text.replace("  ray:\n", f"  ray:\n    env: {{A: {token}}}\n")
            else:
                yield f"{line.strip()}", text.rstrip("\n") + "\n" + line + "\n"


def _names_and_keys() -> Iterator[tuple[str, str]]:
    base = sample_doc("gemma-b200.yaml")
    for name in ["gemma.v2", "1gemma", "Gemma", "gemma-", "-gemma", "gemma_2", "g", "a" * 40, "a" * 41, "a" * 64]:
        doc = copy.deepcopy(base)
        doc["metadata"]["name"] = name
        yield f"metadata.name {name!r}", _dump(doc)
    for labels in [{"team": "a b"}, {"bad key!": "x"}, {"example.com/team": "search"}, {"t": "x" * 64}, {"t": ""}]:
        doc = copy.deepcopy(base)
        doc["metadata"]["labels"] = labels
        yield f"metadata.labels {labels}"[:60], _dump(doc)
    text = _dump(base)
    yield (
        "a key written twice",
        text.replace("  replicas:\n", "  replicas:\n    min: 2\n", 1).replace(
            "spec:\n", "spec:\n  suspend: false\n  suspend: true\n", 1
        ),
    )
    twice = "spec:\n  ray: {version: 2.60.0, version: 2.60.0}\n"
    yield "a key written twice (nested)", text.replace("spec:\n", twice, 1)
    yield "a mapping merged in (<<)", "base: &b {suspend: false}\n" + text.replace("spec:\n", "spec:\n  <<: *b\n", 1)


def _rule_cases() -> Iterator[tuple[str, str]]:
    """The rules' edge cases: CEL at the API server and Python in validate must agree."""
    for base, changes, path, _ in CASES:
        if path != "spec.engine.extraArgs":  # CEL cannot see the keys of extraArgs (see README)
            yield f"rule {path} {changes}"[:80], _dump(with_spec(sample_doc(base), **changes))
    for base, changes in GOOD_CASES:
        yield f"valid {changes}"[:80], _dump(with_spec(sample_doc(base), **changes))


def corpus() -> list[tuple[str, str]]:
    """(label, YAML text) pairs; every text is meant to be sent to namespace `default`."""
    out = [*_edited_samples(), *_snake_case_fields(), *_yaml_tokens(), *_names_and_keys(), *_rule_cases()]
    assert len({t for _, t in out}) > 0.95 * len(out), "the corpus repeats itself"
    return out
