"""References an LLMService makes that the CRD schema cannot check: Secrets (with the keys the
pods will read), PVCs and the ServiceAccount must exist before anything is applied."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..api.resource import LLMService
from ..render.edge import API_KEYS_FILE
from ..render.plan import parse_source
from ..render.storage import S3_KEYS

Getter = Callable[[str, str, str], dict[str, Any] | None]  # (kind, namespace, name) -> object or None
Forget = Callable[[str, str, str], None]


class References:
    """Referenced objects found recently, remembered for `ttl` seconds: a fleet that shares
    one Secret reads it once per ttl, not once per reconcile. Only what the checks read is
    kept (a Secret's key names and version, never its data). What was not found, or failed a check
    (`forget`), is read again the next time."""

    MAX = 4096

    def __init__(self, get: Getter, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._get, self._ttl, self._clock = get, ttl, clock
        self._lock = threading.Lock()
        self._found: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key, now = (kind, namespace, name), self._clock()
        with self._lock:
            hit = self._found.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        obj = self._get(kind, namespace, name)
        with self._lock:
            if obj is None:
                self._found.pop(key, None)
                return None
            kept = {}
            if kind == "Secret":  # the key names and the version, never the data
                version = (obj.get("metadata") or {}).get("resourceVersion")
                kept = {"data": dict.fromkeys(_keys(obj), ""), "metadata": {"resourceVersion": version}}
            if len(self._found) >= self.MAX:  # bounded: drop what has expired
                self._found = {k: v for k, v in self._found.items() if v[0] > now}
            self._found[key] = (now + self._ttl, kept)
            return kept

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._found.pop((kind, namespace, name), None)


def _keys(secret: dict[str, Any]) -> set[str]:
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


def _wanted_secrets(svc: LLMService) -> list[tuple[str, str, set[str]]]:
    """(field, Secret, keys it must hold) for every Secret the spec names."""
    s = svc.spec
    wanted: list[tuple[str, str, set[str]]] = []
    if s.model.hf_token_secret:
        wanted.append(("spec.model.hfTokenSecret", s.model.hf_token_secret.name, {s.model.hf_token_secret.key}))
    if s.model.storage.s3 and s.model.storage.s3.credentials_secret:
        wanted.append(("spec.model.storage.s3.credentialsSecret", s.model.storage.s3.credentials_secret, set(S3_KEYS)))
    if s.ingress.api_keys_secret:
        wanted.append(("spec.ingress.apiKeysSecret", s.ingress.api_keys_secret, {API_KEYS_FILE}))
    if s.ingress.tls_secret:
        wanted.append(("spec.ingress.tlsSecret", s.ingress.tls_secret, {"tls.crt", "tls.key"}))
    for env, ref in sorted(s.ray.secret_env.items()):
        wanted.append((f"spec.ray.secretEnv.{env}", ref.name, {ref.key}))
    ft = s.fault_tolerance
    if ft and ft.redis_password_secret:
        redis = ft.redis_password_secret
        wanted.append(("spec.faultTolerance.redisPasswordSecret", redis.name, {redis.key}))
    return wanted


def referenced(svc: LLMService) -> list[tuple[str, str]]:
    """(kind, name) of every object the spec names in its namespace."""
    out = [("Secret", name) for _, name, _ in _wanted_secrets(svc)]
    if svc.spec.ray.service_account_name:
        out.append(("ServiceAccount", svc.spec.ray.service_account_name))
    source = parse_source(svc.spec.model.source)
    if source.claim:
        out.append(("PersistentVolumeClaim", source.claim))
    return list(dict.fromkeys(out))


def problems(svc: LLMService, found: Mapping[tuple[str, str], dict[str, Any] | None]) -> tuple[list[str], list[str]]:
    """What keeps the service from being applied, each with the field and the fix; and the
    Secrets found without a key they need (to be read again on the retry: the key may be added)."""
    ns = svc.metadata.namespace
    out, stale = [], []
    for fld, name, keys in _wanted_secrets(svc):
        obj = found.get(("Secret", name))
        if obj is None:
            out.append(f"{fld}: Secret {ns}/{name} not found: create it")
        elif missing := sorted(keys - _keys(obj)):
            out.append(f"{fld}: Secret {ns}/{name} has no key {', '.join(missing)}: add it")
            stale.append(name)
    account = svc.spec.ray.service_account_name
    if account and found.get(("ServiceAccount", account)) is None:
        # KubeRay could not create a single pod: say so before anything is applied.
        out.append(f"spec.ray.serviceAccountName: ServiceAccount {ns}/{account} not found: create it")
    claim = parse_source(svc.spec.model.source).claim
    if claim and found.get(("PersistentVolumeClaim", claim)) is None:
        out.append(f"spec.model.source: PersistentVolumeClaim {ns}/{claim} not found: create it")
    return out, list(dict.fromkeys(stale))
