"""Why a Serve replica fails to start, from the replica's own log.

Serve reports a replica that fails to start only after its third attempt (DEPLOY_FAILED,
minutes later), and then with the replica constructor's exception ("Engine core initialization
failed. See root cause above."), while the cause (the engine argument vLLM refused, the path it
could not read) is in the replica's log inside the worker pod. So, while a Serve app of the
service deploys, the operator asks the Ray dashboard (with the cluster's token, as KubeRay
does) for the app's replicas and the replica actors that died, reads the logs of those that
started or failed, and keeps the exception line that stopped one. The dashboard is asked at
most once per `period` per Ray cluster; a log already read to a cause is not read again.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3

from ..api.resource import LLMService
from ..render import names, startup
from ..render.status import with_detail

log = logging.getLogger(__name__)

DASHBOARD_PORT = 8265
DEPLOYING = {"DEPLOYING", "DEPLOY_FAILED", "UNHEALTHY"}
LOG_LINES = 400
ENGINE_LOG_LINES = 2000  # from the end: the engine's start lines, before the requests' lines
EVENT_LINES = 12  # the log lines an Event shows, ending with the cause
# An exception line anywhere in a log line (after vLLM's or Ray's prefixes): "ValueError: ...",
# "huggingface_hub.errors.LocalEntryNotFoundError: ...".
_EXCEPTION = re.compile(r"(?:^|[\s\]|)])((?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception)\w*: \S.*)$")
# Exceptions that only wrap the one that matters (its cause is logged above them).
_WRAPPERS = (
    "See root cause above",
    "Engine core initialization failed",
    "RayTaskError",
    "RayActorError",
    "ActorDiedError",
    "ActorUnschedulableError",
    "The deployment failed to start",
    "Failed to update the deployments",
    "please check the stack trace above",
)


@dataclass(frozen=True)
class RootCause:
    line: str  # the exception that stopped the replica, one line
    text: str  # the log lines that show it (for an Event)


_TRACEBACK = "Traceback (most recent call last)"
_NOT_CAUSES = ("CancelledError", "KeyboardInterrupt", "SystemExit")


def cause_in(log_text: str) -> RootCause | None:
    """The last exception a traceback in a replica's log ends with that is not a wrapper of
    another one (nor a cancellation: a replica stopped while it starts)."""
    lines = log_text.splitlines()
    traced = [i for i, ln in enumerate(lines) if _TRACEBACK in ln]
    for i in range(len(lines) - 1, -1, -1):
        m = _EXCEPTION.search(lines[i].rstrip())
        if not m or any(w in lines[i] for w in (*_WRAPPERS, *_NOT_CAUSES)):
            continue
        if not any(t < i for t in traced):  # an exception logged in passing, not one that stopped it
            continue
        start = max(0, i - EVENT_LINES + 1)
        line = with_detail([m.group(1), *lines[i + 1 : i + 3]], 0)
        return RootCause(line, "\n".join(ln.rstrip() for ln in lines[start : i + 1]))
    return None


class Fetch(Protocol):
    def __call__(self, url: str, token: str | None) -> bytes | None: ...


def _http_fetch() -> Fetch:
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1.0, read=4.0), retries=False)

    def fetch(url: str, token: str | None) -> bytes | None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = pool.request("GET", url, headers=headers, preload_content=True)
        return resp.data if resp.status == 200 else None

    return fetch


class RootCauses:
    def __init__(
        self,
        kube: Any,
        fetch: Fetch | None = None,
        period: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self._fetch = fetch or _http_fetch()
        self.period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._asked: dict[str, float] = {}  # Ray cluster -> when its dashboard was last asked
        self._found: dict[str, dict[str, RootCause]] = {}  # Ray cluster -> deployment -> cause
        self._read: dict[str, set[str]] = {}  # Ray cluster -> dead replica actors whose logs were read
        self._engine: dict[str, dict[str, str]] = {}  # Ray cluster -> engine start steps (read once)
        self._engine_asked: dict[str, float] = {}

    def _token(self, svc: LLMService) -> str | None:
        if svc.spec.ray.auth != "token":
            return None
        secret = self.kube.get("v1", "Secret", svc.metadata.namespace, names.ray_auth_secret(svc.metadata.name))
        value = ((secret or {}).get("data") or {}).get(names.RAY_AUTH_TOKEN_KEY)
        return base64.b64decode(value).decode() if value else None

    def find(
        self, svc: LLMService, ray_service: dict[str, Any], pods: tuple[dict[str, Any], ...]
    ) -> dict[str, RootCause]:
        """deployment -> why its replicas fail to start, for the Ray clusters of `ray_service`
        whose apps deploy (or failed to); {} when none does."""
        status = ray_service.get("status") or {}
        out: dict[str, RootCause] = {}
        live = set()
        for which in ("activeServiceStatus", "pendingServiceStatus"):
            st = status.get(which) or {}
            cluster = st.get("rayClusterName")
            if not cluster:
                continue
            live.add(cluster)
            apps = st.get("applicationStatuses") or {}
            if not any(a.get("status") in DEPLOYING for a in apps.values()):
                continue
            head = _head(pods, cluster)
            if head is not None:
                self._look(svc, cluster, f"http://{head['status']['podIP']}:{DASHBOARD_PORT}")
            with self._lock:
                out.update(self._found.get(cluster, {}))
        with self._lock:  # forget clusters that are gone
            for gone in set(self._found) - live:
                del self._found[gone]
            for gone in set(self._asked) - live:
                del self._asked[gone]
            for gone in set(self._read) - live:
                del self._read[gone]
        return out

    def engine_steps(
        self, svc: LLMService, ray_service: dict[str, Any], pods: tuple[dict[str, Any], ...]
    ) -> dict[str, str]:
        """Step -> time of the engine's start in the first running replica of the Ray cluster
        starting (the pending one, else the active one), from vLLM's lines in the replica's log
        (render.startup.engine_steps). Read once per cluster, once its app runs; {} before."""
        status = ray_service.get("status") or {}
        st = status.get("pendingServiceStatus") or {}
        if not st.get("rayClusterName"):
            st = status.get("activeServiceStatus") or {}
        cluster = st.get("rayClusterName")
        with self._lock:
            for gone in set(self._engine) | set(self._engine_asked):
                if gone != cluster:
                    self._engine.pop(gone, None)
                    self._engine_asked.pop(gone, None)
            if not cluster or cluster in self._engine:
                return dict(self._engine.get(cluster or "", {}))
        apps = st.get("applicationStatuses") or {}
        head = _head(pods, cluster)
        if not apps or any(a.get("status") != "RUNNING" for a in apps.values()) or head is None:
            return {}
        if not self._due(self._engine_asked, cluster):
            return {}
        try:
            found = self._engine_log(f"http://{head['status']['podIP']}:{DASHBOARD_PORT}", self._token(svc))
        except Exception as e:  # the dashboard busy or not reachable: the next look
            log.debug("no replica log from %s: %s", cluster, e)
            return {}
        if found is None:
            return {}
        year = int((ray_service["metadata"].get("creationTimestamp") or "1970")[:4])
        steps = startup.engine_steps(found, year)
        with self._lock:
            self._engine[cluster] = steps
        return dict(steps)

    def _engine_log(self, base: str, token: str | None) -> str | None:
        """The log of the first running model replica (the one started first); None: none runs."""
        serve = self._json(f"{base}/api/serve/applications/", token) or {}
        running = [
            r
            for app in (serve.get("applications") or {}).values()
            for name, d in (app.get("deployments") or {}).items()
            if not any(x in name for x in ("Ingress", "Router", "Proxy"))  # the model's, not the front's
            for r in d.get("replicas") or []
            if r.get("state") == "RUNNING" and r.get("actor_id")
        ]
        if not running:
            return None
        first = min(running, key=lambda r: r.get("start_time_s") or 0)
        query = urllib.parse.urlencode({"actor_id": first["actor_id"], "suffix": "out", "lines": ENGINE_LOG_LINES})
        return (self._fetch(f"{base}/api/v0/logs/file?{query}", token) or b"").decode(errors="replace")

    def _due(self, asked: dict[str, float], cluster: str) -> bool:
        """At most one dashboard question per `period` per Ray cluster: True (and noted) when due."""
        now = self._clock()
        with self._lock:
            if now - asked.get(cluster, -1e9) < self.period:
                return False
            asked[cluster] = now
            return True

    def _look(self, svc: LLMService, cluster: str, base: str) -> None:
        if not self._due(self._asked, cluster):
            return
        try:
            token = self._token(svc)
            with self._lock:
                read = set(self._read.get(cluster, ()))
            found = self._causes(base, token, read)
            with self._lock:
                self._read[cluster] = read
        except Exception as e:  # the dashboard is not up yet, or not reachable: the next look
            log.debug("no replica logs from %s: %s", base, e)
            return
        if found:
            with self._lock:
                self._found.setdefault(cluster, {}).update(found)

    def _json(self, url: str, token: str | None) -> Any:
        body = self._fetch(url, token)
        return json.loads(body) if body else None

    def _causes(self, base: str, token: str | None, read: set[str]) -> dict[str, RootCause]:
        """deployment -> cause, from the logs of replica actors of the service's apps that died
        (Serve stops a replica whose start failed, then starts another). Each dead actor's log
        is read once (`read`)."""
        serve = self._json(f"{base}/api/serve/applications/", token) or {}
        apps = set(serve.get("applications") or {})
        query = urllib.parse.urlencode(
            {
                "detail": "true",
                "limit": "200",
                "filter_keys": "state",
                "filter_predicates": "=",
                "filter_values": "DEAD",
            }
        )
        dead = self._json(f"{base}/api/v0/actors?{query}", token) or {}
        out: dict[str, RootCause] = {}
        for a in ((dead.get("data") or {}).get("result") or {}).get("result") or []:
            actor, cls = a.get("actor_id"), a.get("class_name") or ""
            parts = cls.split(":", 2)  # ServeReplica:<app>:<deployment>
            if not actor or actor in read or len(parts) < 3 or parts[0] != "ServeReplica" or parts[1] not in apps:
                continue
            read.add(actor)
            for suffix in ("out", "err"):
                query = urllib.parse.urlencode({"actor_id": actor, "suffix": suffix, "lines": LOG_LINES})
                text = (self._fetch(f"{base}/api/v0/logs/file?{query}", token) or b"").decode(errors="replace")
                cause = cause_in(text)
                if cause is not None:
                    out[parts[2]] = cause
                    break
            else:  # killed from outside (out of memory, a crash): no traceback, Ray knows why
                if (cause := death_cause(a)) is not None:
                    out[parts[2]] = cause
        return out


def _head(pods: tuple[dict[str, Any], ...], cluster: str) -> dict[str, Any] | None:
    """The head pod of Ray cluster `cluster`, once it has an IP (the dashboard's)."""
    return next((p for p in startup.ray_pods(pods, cluster, "head") if (p.get("status") or {}).get("podIP")), None)


# Ray's words for a worker killed from outside, in an actor's death cause.
_EXIT_DETAIL = re.compile(r"Worker exit type: (\w+)\.? Worker exit detail: (.*)", re.S)
_OUTSIDE = {"NODE_OUT_OF_MEMORY": "OutOfMemory", "SYSTEM_ERROR": "WorkerCrashed"}


def death_cause(actor: dict[str, Any]) -> RootCause | None:
    """Why Ray says a replica actor died, when it was killed from outside its code: by Ray's
    memory monitor (the node or pod near its memory limit) or a crash of its process; None for
    a replica Serve stopped on purpose."""
    messages = [
        ctx.get("error_message") or "" for ctx in (actor.get("death_cause") or {}).values() if isinstance(ctx, dict)
    ]
    for text in messages:
        m = _EXIT_DETAIL.search(text)
        kind = _OUTSIDE.get(m.group(1)) if m else ("OutOfMemory" if "running low on memory" in text else None)
        if kind is None:
            continue
        detail = " ".join((m.group(2) if m else text).split())
        sentences = re.split(r"(?<=[.)])\s+(?=[A-Z])", detail)
        return RootCause(f"{kind}: {' '.join(sentences[:2])}"[:400], detail)
    return None
