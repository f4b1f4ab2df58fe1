"""Readiness probes for the Ray containers: KubeRay's own checks, asked sooner and more often.

Left unset, KubeRay injects them with a 10 s initial delay and a 5 s period. The head's
readiness is on a cold start's critical path: KubeRay submits the Serve application only once
the head pod is Ready ("The head Pod is not ready, requeue"), and Ray's dashboard agent answers
a few seconds after the container starts. A worker becomes a Service endpoint one probe after
its replica serves. The same checks every 2 s cost a few HTTP requests (an exec of wget on the
worker, as KubeRay's) and save up to a period on each; the tolerance before a Ready pod turns
unready stays KubeRay's (10 failures of 5 s on the head, one on a worker, whose proxy drains).
"""

from __future__ import annotations

from typing import Any

from .serve_config import SERVE_PORT

DASHBOARD_AGENT_PORT = 52365  # Ray's default dashboard-agent-listen-port, which KubeRay probes
PERIOD_SECONDS = 2


def head_readiness() -> dict[str, Any]:
    """Ray's dashboard agent healthy (GCS and raylet up), as KubeRay checks it."""
    return {
        "httpGet": {"path": "/api/healthz", "port": DASHBOARD_AGENT_PORT},
        "initialDelaySeconds": 2,
        "periodSeconds": PERIOD_SECONDS,
        "timeoutSeconds": 5,
        "failureThreshold": 25,  # 50 s, as KubeRay's 10 x 5 s
    }


def worker_readiness() -> dict[str, Any]:
    """The raylet healthy and this node's Serve proxy serving, as KubeRay checks a Serve worker."""
    check = (
        f"wget --tries 1 -T 2 -q -O- http://localhost:{DASHBOARD_AGENT_PORT}/api/local_raylet_healthz | grep success"
        f" && wget --tries 1 -T 10 -q -O- http://localhost:{SERVE_PORT}/-/healthz | grep success"
    )
    return {
        "exec": {"command": ["bash", "-c", check]},
        "initialDelaySeconds": 2,
        "periodSeconds": PERIOD_SECONDS,
        "timeoutSeconds": 2,
        "failureThreshold": 1,
    }
