"""References an LLMService makes that the CRD schema cannot check: Secrets (with the keys the
pods will read), PVCs and the ServiceAccount must exist before anything is applied."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..api.resource import LLMService
from ..render.edge import API_KEYS_FILE

Getter = Callable[[str, str, str], dict[str, Any] | None]  # (kind, namespace, name) -> object or None


def _secret_keys(get: Getter, ns: str, name: str) -> set[str] | None:
    obj = get("Secret", ns, name)
    if obj is None:
        return None
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {})


def problems(svc: LLMService, get: Getter) -> list[str]:
    s, ns = svc.spec, svc.metadata.namespace
    wanted: list[tuple[str, str, set[str]]] = []  # (field, secret, keys)
    if s.model.hf_token_secret:
        wanted.append(("spec.model.hfTokenSecret", s.model.hf_token_secret.name, {s.model.hf_token_secret.key}))
    if s.ingress.api_keys_secret:
        wanted.append(("spec.ingress.apiKeysSecret", s.ingress.api_keys_secret, {API_KEYS_FILE}))
    if s.ingress.tls_secret:
        wanted.append(("spec.ingress.tlsSecret", s.ingress.tls_secret, {"tls.crt", "tls.key"}))
    for env, ref in sorted(s.ray.secret_env.items()):
        wanted.append((f"spec.ray.secretEnv.{env}", ref.name, {ref.key}))
    ft = s.fault_tolerance
    if ft and ft.redis_password_secret:
        ref = ft.redis_password_secret
        wanted.append(("spec.faultTolerance.redisPasswordSecret", ref.name, {ref.key}))
    out = []
    for field, name, keys in wanted:
        have = _secret_keys(get, ns, name)
        if have is None:
            out.append(f"{field}: Secret {ns}/{name} not found: create it")
        elif missing := sorted(keys - have):
            out.append(f"{field}: Secret {ns}/{name} has no key {', '.join(missing)}: add it")
    account = s.ray.service_account_name
    if account and get("ServiceAccount", ns, account) is None:
        # KubeRay could not create a single pod: say so before anything is applied.
        out.append(f"spec.ray.serviceAccountName: ServiceAccount {ns}/{account} not found: create it")
    if s.model.source.startswith("pvc://"):
        claim = s.model.source.removeprefix("pvc://").split("/", 1)[0]
        if get("PersistentVolumeClaim", ns, claim) is None:
            out.append(f"spec.model.source: PersistentVolumeClaim {ns}/{claim} not found: create it")
    return out
