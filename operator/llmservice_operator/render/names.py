"""Stable, DNS-safe child names of at most 63 characters."""

from __future__ import annotations

import hashlib

from .. import labels as keys

MAX = 63


def child(base: str, *suffixes: str, limit: int = MAX) -> str:
    name = "-".join((base, *filter(None, suffixes)))
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def labels(svc_name: str) -> dict[str, str]:
    """Labels on every child and pod: who owns it, for selectors and `kubectl get -l`."""
    return {
        keys.NAME: "llmservice",
        keys.INSTANCE: svc_name,
        keys.MANAGED_BY: keys.MANAGER,
        keys.OWNER: svc_name,
    }


RAY_AUTH_TOKEN_KEY = "auth_token"  # the key KubeRay reads from authOptions.secretName


def ray_auth_secret(svc_name: str) -> str:
    """The Secret with the Ray cluster's token (ray.auth: token), made once by the operator."""
    return child(svc_name, "ray-auth")
