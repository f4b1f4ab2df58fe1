"""YAML as kubectl and the API server read it, and YAML output for people.

Reading: Kubernetes parses YAML with go-yaml v2 rules (YAML 1.1) and turns it into JSON before
anything else sees it; PyYAML's YAML 1.1 differs in places that change a verdict (`y` and `n`
are booleans, `1e3` is a number, `1:10` is a string, a repeated key is an error), so `load_all`
resolves plain scalars the go-yaml way and then makes numbers what the JSON round trip makes
them (2.0 is the integer 2; integers outside int64 are floats).

Writing: no anchors/aliases, multi-line strings as literal blocks.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import yaml


class YAMLInputError(ValueError):
    """The text is not a manifest the API server could decode; the message says why and where."""


# go-yaml v2's resolve table: these exact words (any other spelling is a string).
_BOOLS = {w: True for w in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")} | {
    w: False for w in ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")
}
_SPECIAL_FLOATS = {
    **{s + w: math.inf for s in ("", "+") for w in (".inf", ".Inf", ".INF")},
    **{"-" + w: -math.inf for w in (".inf", ".Inf", ".INF")},
    **{w: math.nan for w in (".nan", ".NaN", ".NAN")},
}
_GO_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdef"}
_INT64 = 2**63
_NUMBER_TAG = "tag:llmservice.dev,2026:go-number"


def _go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64), then ParseUint: base prefixes 0x, 0o, 0b and a leading 0
    (octal); None where Go refuses."""
    sign, body = (-1 if text[0] == "-" else 1, text[1:]) if text[:1] in "+-" else (1, text)
    prefix = body[:2].lower()
    if prefix in ("0x", "0o", "0b"):
        base, digits = {"0x": 16, "0o": 8, "0b": 2}[prefix], body[2:]
    elif body[:1] == "0" and len(body) > 1:
        base, digits = 8, body[1:]
    else:
        base, digits = 10, body
    if not digits or any(c not in _DIGITS[base] for c in digits.lower()):
        return None
    value = sign * int(digits, base)
    fits = -_INT64 <= value < _INT64 or (text[:1] not in "+-" and 0 <= value < 2**64)
    return value if fits else None


def _go_number(text: str) -> Any:
    """A plain scalar starting with a digit, sign or dot, resolved as go-yaml v2 does."""
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    plain = text.replace("_", "")
    if plain and (value := _go_int(plain)) is not None:
        return value
    if _GO_FLOAT.match(plain):
        number = float(plain)
        return number if math.isfinite(number) else text  # Go's ParseFloat refuses overflow
    return text


# A manifest needs a dozen levels and a few thousand values; YAML aliases can make a small
# file expand into billions of values or refer to itself, which JSON cannot hold either.
MAX_DEPTH = 64
MAX_VALUES = 200_000


def as_json(value: Any) -> Any:
    """What encoding `value` to JSON and decoding it again gives the API server: a number
    without a fraction that fits int64 is an integer, any other a float; map keys are strings.
    Raises YAMLInputError for what JSON cannot carry or no manifest needs."""
    budget = [MAX_VALUES]
    return _as_json(value, 0, budget, set())


def _as_json(value: Any, depth: int, budget: list[int], open_: set[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise YAMLInputError(f"expands to more than {MAX_VALUES} values (YAML aliases?), more than a manifest needs")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise YAMLInputError(f"{value} is not a number JSON can carry (the API server refuses .inf and .nan)")
        return int(value) if value.is_integer() and -_INT64 <= value < _INT64 else value
    if not isinstance(value, dict | list):
        raise YAMLInputError(f"a {type(value).__name__} value ({value!r:.40}) has no JSON form: write it as a string")
    if depth >= MAX_DEPTH:
        raise YAMLInputError(f"nested more than {MAX_DEPTH} levels deep, more than a manifest needs")
    if id(value) in open_:
        raise YAMLInputError("contains itself (a YAML alias inside its own anchor), which JSON cannot hold")
    open_.add(id(value))
    try:
        if isinstance(value, dict):
            return {_json_key(k): _as_json(v, depth + 1, budget, open_) for k, v in value.items()}
        return [_as_json(v, depth + 1, budget, open_) for v in value]
    finally:
        open_.discard(id(value))


def _json_key(key: Any) -> str:
    """Map keys become JSON object keys, i.e. strings (`1: a` is the key "1")."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, int | float):
        return str(as_json(key))
    raise YAMLInputError(f"a map key must be a string, number or boolean, not a {type(key).__name__}")


class KubeLoader(yaml.CSafeLoader):  # libyaml parses; resolution stays in Python
    """Safe loading with go-yaml v2's scalar resolution and duplicate keys refused."""

    # go-yaml's resolvers only (filled below), not PyYAML's.
    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {}  # type: ignore[misc]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue  # `<<: *base` may set keys this mapping sets again
            key = self._key(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'key "{key}" already set in this mapping (a repeated key)', key_node.start_mark
                )
            seen.add(key)
        self.flatten_mapping(node)
        return {self._key(k): self.construct_object(v, deep=deep) for k, v in node.value}

    def _key(self, node: yaml.Node) -> str:
        try:
            return _json_key(self.construct_object(node, deep=True))
        except YAMLInputError as e:
            raise yaml.constructor.ConstructorError(None, None, str(e), node.start_mark) from None


_MERGE = "tag:yaml.org,2002:merge"
for _tag, _resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
    for _kind, _regexp in _resolvers:
        if _kind in ("tag:yaml.org,2002:null", _MERGE):  # same as go-yaml
            KubeLoader.yaml_implicit_resolvers.setdefault(_tag, []).append((_kind, _regexp))
KubeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile("^(?:" + "|".join(_BOOLS) + ")$"), list("yYnNtTfFoO")
)
KubeLoader.add_implicit_resolver(_NUMBER_TAG, re.compile(r"^[-+.0-9].*$", re.S), list("-+.0123456789"))


def _scalar(loader: Any, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(loader.construct_scalar(node))


KubeLoader.add_constructor("tag:yaml.org,2002:bool", lambda loader, node: _BOOLS[_scalar(loader, node)])
KubeLoader.add_constructor(_NUMBER_TAG, lambda loader, node: _go_number(_scalar(loader, node)))


def load_all(text: str) -> list[Any]:
    """Every non-empty document, as the API server would receive it (JSON values only).
    Raises yaml.YAMLError for syntax, YAMLInputError for what JSON cannot carry."""
    return [as_json(doc) for doc in yaml.load_all(text, Loader=KubeLoader) if doc is not None]


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        # Literal blocks cannot hold trailing spaces; those strings keep the quoted style.
        text = data if all(not ln.endswith(" ") for ln in data.splitlines()) else None
        if text is not None:
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120)


def dump_all(objs: list[Any]) -> str:
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, width=120)
