"""Stable, DNS-safe child names of at most 63 characters."""

from __future__ import annotations

import hashlib

MAX = 63
# On every Ray pod template: the digest of what the engine loads (see rayservice._pin_engine).
ENGINE_ANNOTATION = "llmservice.dev/engine"


def child(base: str, *suffixes: str, limit: int = MAX) -> str:
    name = "-".join((base, *filter(None, suffixes)))
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def labels(svc_name: str) -> dict[str, str]:
    """Labels on every child and pod: who owns it, for selectors and `kubectl get -l`."""
    return {
        "app.kubernetes.io/name": "llmservice",
        "app.kubernetes.io/instance": svc_name,
        "app.kubernetes.io/managed-by": "llmservice-operator",
        "llmservice.dev/name": svc_name,
    }
