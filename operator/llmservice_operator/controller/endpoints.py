"""The operator's own HTTP port: Prometheus metrics on /metrics and readiness on /readyz.

Ready means able to take over: kopf has started, and with peering this replica is in the
peering object (until then it would not notice the leader leaving). kopf's /healthz on the
health port says only that the process runs, which a replica is long before that; a rollout
that stopped the old pods on that would leave nobody working (seen: a 35 s gap)."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no log
        pass


def serve(address: str, ready: Callable[[], str | None]) -> WSGIServer:
    """Start serving on host:port in a thread; `ready()` returns None when ready, else why not."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/readyz":
            why = ready()
            start_response("503 Service Unavailable" if why else "200 OK", [("Content-Type", "text/plain")])
            return [f"not ready: {why}\n".encode() if why else b"ready\n"]
        return metrics(environ, start_response)

    host, _, port = address.rpartition(":")
    server = make_server(host or "0.0.0.0", int(port), app, server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
