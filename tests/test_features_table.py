"""docs/features.md names, for every spec field, how far it is proven and the test that proves it;
the table, the spec and the tests stay in step."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, NamedTuple, get_args

from pydantic import BaseModel

from llmservice_operator.api.spec import LLMServiceSpec
from testkit.tiers import COMPONENT_MODULES, SERVING_MODULES

from .conftest import ROOT

TABLE = ROOT / "docs" / "features.md"
LEVELS = ("rendered", "cluster", "served", "none")
# Known gaps: spec fields no test sets or asserts (Proven: none). Remove a field when a test covers it.
UNPROVEN: set[str] = set()  # fields nothing proves: none today; a gap goes here, visibly
# e2e/tests modules that run no cluster: the component ones, and Ray's own DPServer arithmetic
# (in the host's pytest under `make test`).
NO_CLUSTER = COMPONENT_MODULES | {"test_ray_dp_bounds.py"}
ROW = re.compile(r"^\| `(?P<field>[^`]+)` \| (?P<proven>\w+) \| (?P<tests>.*?) \| (?P<notes>.*) \|$")


class Row(NamedTuple):
    field: str
    proven: str
    tests: list[str]  # path::name, relative to the repository root


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models in an annotation, inside Optional, unions, lists and dicts too."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def spec_leaves(model: type[BaseModel] = LLMServiceSpec, prefix: str = "") -> set[str]:
    """Every leaf field of the spec by its camelCase path (model.hfTokenSecret.name)."""
    out: set[str] = set()
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name)
        subs = _models(field.annotation)
        out |= set().union(*(spec_leaves(m, path + ".") for m in subs)) if subs else {path}
    return out


@functools.cache
def rows() -> list[Row]:
    lines = [ln for ln in TABLE.read_text().splitlines() if ln.startswith("| `")]
    bad = [ln for ln in lines if not ROW.match(ln)]
    assert not bad, f"rows of docs/features.md not `| `field` | level | tests | notes |`: {bad}"
    return [
        Row(m["field"], m["proven"], re.findall(r"`([^`]+::[^`]+)`", m["tests"]))
        for m in (ROW.match(ln) for ln in lines)
        if m
    ]


def _covers(row_field: str, leaf: str) -> bool:
    return leaf == row_field or leaf.startswith(row_field + ".")


LEAVES = spec_leaves()


def test_every_spec_field_has_a_row():
    missing = sorted(leaf for leaf in LEAVES if not any(_covers(r.field, leaf) for r in rows()))
    assert not missing, f"spec fields with no row: add a row to docs/features.md for {missing}"


def test_every_row_names_a_spec_field_once():
    stale = [r.field for r in rows() if not any(_covers(r.field, leaf) for leaf in LEAVES)]
    assert not stale, f"rows of docs/features.md naming no spec field (renamed or removed?): {stale}"
    overlap = [(a.field, b.field) for a in rows() for b in rows() if a is not b and _covers(a.field, b.field)]
    assert not overlap, f"fields with more than one row in docs/features.md: {overlap}"


def test_levels_are_known_and_none_only_for_the_known_gaps():
    unknown = [(r.field, r.proven) for r in rows() if r.proven not in LEVELS]
    assert not unknown, f"Proven must be one of {LEVELS}: {unknown}"
    unproven = {r.field for r in rows() if r.proven == "none"}
    assert unproven == UNPROVEN, (
        f"Proven none but not in UNPROVEN: {sorted(unproven - UNPROVEN)}; "
        f"in UNPROVEN but proven (drop them from UNPROVEN): {sorted(UNPROVEN - unproven)}"
    )
    assert not [r.field for r in rows() if r.proven == "none" and r.tests], "a none row names no test"
    assert not [r.field for r in rows() if r.proven != "none" and not r.tests], "a proven row names its test"


def test_every_referenced_test_exists():
    missing = []
    for r in rows():
        for ref in r.tests:
            path, _, name = ref.partition("::")
            file = ROOT / path
            if not file.is_file() or f"def {name}(" not in file.read_text():
                missing.append(f"{r.field}: {ref}")
    assert not missing, f"docs/features.md names tests that do not exist: {missing}"


def _tier(ref: str) -> str:
    """The level a referenced test's module can prove (its tier in testkit/tiers.py)."""
    path = Path(ref.partition("::")[0])
    if path.parts[:2] != ("e2e", "tests"):
        return "rendered"
    if path.name in SERVING_MODULES:
        return "served"
    return "rendered" if path.name in NO_CLUSTER else "cluster"


def test_a_level_is_backed_by_a_test_at_that_level():
    """served: a test on the real node's pods; cluster: one against the local control plane."""
    unbacked = [
        f"{r.field} ({r.proven}): {r.tests}"
        for r in rows()
        if r.proven in ("served", "cluster") and not any(_tier(t) == r.proven for t in r.tests)
    ]
    assert not unbacked, f"rows of docs/features.md without a test at their level: {unbacked}"
