"""Does a live object still hold everything we want? Pure; decides whether to write at all."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..render.rayservice import EXPOSURE_ANNOTATIONS


def contains(live: Any, desired: Any) -> bool:
    """True when every field of `desired` is in `live` with the same value. Fields the API
    server or other controllers added (defaults, status, their own labels) do not matter;
    lists must match item by item, because server-side apply owns them whole."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=False))
        )
    return live == desired


def up_to_date(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    if live is None:
        return False
    fields = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    return contains(live, fields)


@dataclass(frozen=True)
class Plan:
    apply: list[dict[str, Any]]  # desired children the live ones differ from
    delete: list[tuple[str, str, str]]  # (apiVersion, kind, name): optional children no longer wanted


def plan(
    desired: list[dict[str, Any]],
    live: Mapping[tuple[str, str], dict[str, Any] | None],
    optional: list[tuple[str, str, str]],
    owner: str,
) -> Plan:
    """What a reconcile writes: the desired children that are missing or differ from `live`
    ((kind, name) -> object or None), and the `optional` children (edge ConfigMap, PDB) the
    spec no longer asks for, if this LLMService owns them (never a same-named object of
    someone else's)."""
    apply = [o for o in desired if not up_to_date(live.get((o["kind"], o["metadata"]["name"])), o)]
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    delete = []
    for api_version, kind, name in optional:
        obj = live.get((kind, name))
        if (kind, name) in wanted or obj is None:
            continue
        owners = obj.get("metadata", {}).get("ownerReferences") or []
        if any(o.get("kind") == "LLMService" and o.get("name") == owner for o in owners):
            delete.append((api_version, kind, name))
    return Plan(apply, delete)


def merge_patch(previous: Any, new: Any) -> Any:
    """A JSON merge patch turning `previous` into `new`: keys that disappeared become null
    (a plain merge would keep them, and the next comparison would never settle)."""
    if not (isinstance(previous, dict) and isinstance(new, dict)):
        return new
    patch = {k: merge_patch(previous.get(k), v) for k, v in new.items()}
    patch.update({k: None for k in previous if k not in new})
    return patch


def exposure_patch(live: dict[str, Any], annotations: dict[str, str], spec: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that gives the live Service the wanted exposure (render.rayservice.
    exposure), or None when it has it. Annotations set earlier and no longer wanted are
    removed: the Service itself lists their keys (EXPOSURE_ANNOTATIONS)."""
    have = (live.get("metadata") or {}).get("annotations") or {}
    before = set(filter(None, have.get(EXPOSURE_ANNOTATIONS, "").split(",")))
    if EXPOSURE_ANNOTATIONS in have:
        before.add(EXPOSURE_ANNOTATIONS)
    gone = {k: None for k in before - set(annotations)}
    live_spec = live.get("spec") or {}
    spec_patch = dict(spec)
    if "loadBalancerSourceRanges" not in spec and live_spec.get("loadBalancerSourceRanges"):
        spec_patch["loadBalancerSourceRanges"] = None
    if not gone and contains(have, annotations) and contains(live_spec, spec) and spec_patch == spec:
        return None
    return {"metadata": {"annotations": {**annotations, **gone}}, "spec": spec_patch}


def bounds_patch(cluster: dict[str, Any], ray_service: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A JSON patch giving a running RayCluster's worker groups the RayService's replica bounds,
    or None when they have them. KubeRay leaves replicas, minReplicas and maxReplicas out of
    the hash that decides whether a RayCluster needs updating (its autoscaler owns replicas), so
    a changed spec.replicas never reaches a running cluster: Serve would want more replicas
    than the cluster may have workers. Each change is guarded by a test of the group's name."""
    want = {g["groupName"]: g for g in ray_service["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])}
    ops: list[dict[str, Any]] = []
    for i, group in enumerate((cluster.get("spec") or {}).get("workerGroupSpecs") or []):
        goal = want.get(group.get("groupName"))
        if goal is None:
            continue
        lo, hi = goal.get("minReplicas", 0), goal.get("maxReplicas", 0)
        changes = {k: v for k, v in (("minReplicas", lo), ("maxReplicas", hi)) if group.get(k) != v}
        replicas = group.get("replicas")
        if replicas is not None and not lo <= replicas <= hi:
            changes["replicas"] = min(max(replicas, lo), hi)
        if changes:
            ops.append({"op": "test", "path": f"/spec/workerGroupSpecs/{i}/groupName", "value": group["groupName"]})
            ops += [
                {"op": "replace", "path": f"/spec/workerGroupSpecs/{i}/{k}", "value": v} for k, v in changes.items()
            ]
    return ops or None
