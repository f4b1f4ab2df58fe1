"""References an LLMService makes that the CRD schema cannot check: Secrets (with the keys the
pods will read), PVCs and the ServiceAccount must exist before anything is applied."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..api.resource import LLMService
from ..render.edge import API_KEYS_FILE

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


def _secret_keys(get: Getter, ns: str, name: str) -> set[str] | None:
    obj = get("Secret", ns, name)
    return None if obj is None else _keys(obj)


def problems(svc: LLMService, get: Getter, forget: Forget = lambda kind, ns, name: None) -> list[str]:
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
            forget("Secret", ns, name)  # read it again on the retry: the key may be added
    account = s.ray.service_account_name
    if account and get("ServiceAccount", ns, account) is None:
        # KubeRay could not create a single pod: say so before anything is applied.
        out.append(f"spec.ray.serviceAccountName: ServiceAccount {ns}/{account} not found: create it")
    if s.model.source.startswith("pvc://"):
        claim = s.model.source.removeprefix("pvc://").split("/", 1)[0]
        if get("PersistentVolumeClaim", ns, claim) is None:
            out.append(f"spec.model.source: PersistentVolumeClaim {ns}/{claim} not found: create it")
    return out
