"""`make bench-dataplane`: the request path side by side, in one run.

(a) Ray Serve with its Python proxy, (b) Ray Serve with HAProxy ingress (the operator's
default), (c) (b) behind the rendered edge sidecar, (d) the stand-in replica hit directly
(Serve's direct-ingress port: the floor). Streaming chat completions at each concurrency,
bounded in count; prints a table and the ratios b/a, c/b and b/d, and writes a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from llmservice_operator.api import parse
from tests.conftest import sample_doc, with_spec

from .harness import DataPath

MODEL = "gemma-4-e2b"
KEY = "sk-bench"


@dataclass
class Result:
    config: str
    concurrency: int
    requests: int
    seconds: float
    tokens: int
    ttft: list[float]
    itl: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds

    @staticmethod
    def pct(xs: list[float], p: float) -> float:
        if not xs:
            return float("nan")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def _one(http: httpx.AsyncClient, url: str, max_tokens: int, r: Result) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": True}
    start = time.perf_counter()
    last = None
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                r.errors += 1
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if not json.loads(line[6:])["choices"][0].get("delta", {}).get("content"):
                    continue
                now = time.perf_counter()
                if last is None:
                    r.ttft.append(now - start)
                else:
                    r.itl.append(now - last)
                last = now
                r.tokens += 1
    except httpx.HTTPError:
        r.errors += 1


async def run_load(config: str, url: str, concurrency: int, requests: int, max_tokens: int) -> Result:
    r = Result(config, concurrency, requests, 0.0, 0, [], [], 0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=headers) as http:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                await _one(http, url, max_tokens, r)

        await _one(http, url, 2, Result(config, 0, 0, 0, 0, [], [], 0))  # warm the connection path
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        r.seconds = time.perf_counter() - start
    return r


def _replica_url(workdir_hint: str = "/tmp/haproxy-serve") -> str:
    """The replica's direct-ingress HTTP port, from the config Ray's HAProxy manager wrote."""
    cfgs = sorted(Path(workdir_hint).glob("*/haproxy.cfg"), key=lambda p: p.stat().st_mtime)
    m = re.findall(r"server SERVE_REPLICA\S+ (127\.0\.0\.1:\d+)", cfgs[-1].read_text()) if cfgs else []
    if not m:
        raise RuntimeError("no direct-ingress replica address found in Ray's haproxy.cfg")
    return f"http://{m[0]}"


def _service(ttft_ms: float, itl_ms: float):
    doc = with_spec(
        sample_doc("gemma-b200.yaml"),
        ingress={"apiKeysSecret": "keys"},
        replicas={"min": 1, "max": 1},
        autoscaling={"targetOngoingRequests": 10000, "maxOngoingRequests": 10000},
    )
    return parse(doc)


def bench(
    concurrencies: list[int], requests_per_level: int, max_tokens: int, ttft_ms: float, itl_ms: float
) -> list[Result]:
    svc = _service(ttft_ms, itl_ms)
    results: list[Result] = []

    def levels(config: str, url: str) -> None:
        for c in concurrencies:
            n = max(requests_per_level, c)
            results.append(asyncio.run(run_load(config, url, c, n, max_tokens)))
            r = results[-1]
            print(f"  {config:<22} c={c:<4} {r.rps:8.1f} req/s  errors={r.errors}", flush=True)

    with DataPath(
        svc, api_keys={KEY: "bench"}, ttft_ms=ttft_ms, itl_ms=itl_ms, haproxy_ingress=False, sidecar=False
    ) as dp:
        levels("a python-proxy", dp.serve_url)
    with DataPath(svc, api_keys={KEY: "bench"}, ttft_ms=ttft_ms, itl_ms=itl_ms) as dp:
        levels("b haproxy-ingress", dp.serve_url)
        levels("c b+edge-sidecar", dp.edge_url)
        levels("d stand-in-direct", _replica_url())
    return results


def report(results: list[Result], png: Path | None) -> str:
    lines = [
        "| config | conc | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | ITL p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.config} | {r.concurrency} | {r.rps:.1f} | {r.tps:.0f} | {r.pct(r.ttft, 50):.1f} | "
            f"{r.pct(r.ttft, 99):.1f} | {r.pct(r.itl, 99):.1f} | {r.errors} |"
        )
    by = {(r.config[0], r.concurrency): r for r in results}
    lines += [
        "",
        "| conc | b/a req/s | c/b req/s | c-b TTFT p99 ms | b/d req/s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in sorted({r.concurrency for r in results}):
        a, b, cc, d = (by.get((k, c)) for k in "abcd")
        if a and b and cc and d:
            lines.append(
                f"| {c} | {b.rps / a.rps:.2f} | {cc.rps / b.rps:.2f} | "
                f"{cc.pct(cc.ttft, 99) - b.pct(b.ttft, 99):+.1f} | {b.rps / d.rps:.2f} |"
            )
    text = "\n".join(lines)
    if png:
        _plot(results, png)
    return text


def _plot(results: list[Result], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for config in dict.fromkeys(r.config for r in results):
        rs = [r for r in results if r.config == config]
        xs = [r.concurrency for r in rs]
        ax1.plot(xs, [r.tps for r in rs], marker="o", label=config)
        ax2.plot(xs, [r.pct(r.ttft, 99) for r in rs], marker="o", label=config)
    for ax, title in ((ax1, "output tokens/s"), (ax2, "TTFT p99 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend()
    fig.suptitle("LLMService request path on CPU (stand-in engine), 2 cores")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--requests", type=int, default=256, help="requests per level (at least the concurrency)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ttft-ms", type=float, default=20)
    p.add_argument("--itl-ms", type=float, default=5)
    p.add_argument("--png", type=Path, default=Path("bench-dataplane.png"))
    a = p.parse_args()
    results = bench([int(c) for c in a.concurrency.split(",")], a.requests, a.max_tokens, a.ttft_ms, a.itl_ms)
    print(report(results, a.png))
    print(f"plot: {a.png} (one run per level: rerun to see the variance)")


if __name__ == "__main__":
    main()
