"""`make bench-dataplane`: the request path side by side, in one run.

(a) Ray Serve with its Python proxy, (b) Ray Serve with HAProxy ingress (the operator's
default), (c) (b) behind the rendered edge sidecar, (d) the stand-in replica hit directly
(Serve's direct-ingress port: the floor). Streaming chat completions at each concurrency,
bounded in count, repeated over rounds: each round starts a fresh Ray for (a) and one for
(b)-(d), whose configs take turns at each level so drift hits all of them alike. Prints
medians with their spread, the paired ratios b/a, c/b and b/d, the proxies' CPU per request,
and whether the issue's targets are met; writes a PNG plot.

Then the same (b), (c), (d) with the real engine: vLLM on CPU under Ray Serve LLM
(`DataPath(engine="vllm")`, the cpu-tiny sample's tiny random-weight Llama, one replica),
output tokens/s and time to first token side by side with their ratios to (d). `--engine
standin` or `--engine vllm` runs one of the two phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from llmservice_operator.api import parse
from llmservice_operator.api.resource import LLMService
from tests.conftest import sample_doc, with_spec

from .harness import DataPath

MODEL = "gemma-4-e2b"
KEY = "sk-bench"
CONFIGS = {"a": "python-proxy", "b": "haproxy-ingress", "c": "b+edge-sidecar", "d": "stand-in-direct"}
# The real-engine phase: the CPU sample's model, and its paths (d: vLLM's replica itself).
ENGINE_MODEL = "tiny-llama"
ENGINE_CONFIGS = {"b": "haproxy-ingress", "c": "b+edge-sidecar", "d": "replica-direct"}
# The targets for the sidecar against (b).
MAX_SIDECAR_THROUGHPUT_COST = 0.05
MAX_SIDECAR_TTFT_P99_MS = 2.0


@dataclass
class Run:
    """One config at one concurrency in one round."""

    config: str  # a key of CONFIGS
    concurrency: int
    round: int
    requests: int
    seconds: float = 0.0
    tokens: int = 0
    errors: int = 0
    # CPU seconds above idle, during the timed part, of the proxies on this path by role:
    # "ray" (Ray Serve's HAProxy or Python proxy actor) and "edge" (the sidecar).
    cpu: dict[str, float] = field(default_factory=dict)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


def pct(xs: list[float], p: float) -> float:
    """Percentile in ms (nearest rank)."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


def chat_body(max_tokens: int, model: str = MODEL, **extra: object) -> dict[str, object]:
    """One streamed chat completion as the benchmark sends it."""
    messages = [{"role": "user", "content": "hi"}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True, **extra}


def _empty_content(line: bytes) -> bool:
    return b'"content":""' in line or b'"content": ""' in line


async def _stream(http: aiohttp.ClientSession, url: str, body: dict[str, object], run: Run) -> None:
    start = time.perf_counter()
    last = None
    chunks, usage = 0, None
    try:
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                run.errors += 1
                return
            # Bytes, not JSON: a load generator that parses every chunk in Python costs more
            # CPU than the proxies it measures (httpx + json did: 4x the proxies' CPU).
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                if b'"usage":{' in line or b'"usage": {' in line:  # the last chunk, if asked for
                    usage = json.loads(line[6:])["usage"]["completion_tokens"]
                if b'"content"' not in line or _empty_content(line):  # vLLM's first chunk: the role
                    continue
                now = time.perf_counter()
                if last is None:
                    run.ttft.append(now - start)
                else:
                    run.itl.append(now - last)
                last = now
                chunks += 1
    except (TimeoutError, aiohttp.ClientError):
        run.errors += 1
        return
    # A real tokenizer may hold a token back (part of a character): usage counts every one.
    run.tokens += chunks if usage is None else usage


Procs = Callable[[], list[psutil.Process]]


async def _load(
    url: str, run: Run, body: dict[str, object], procs: dict[str, list[psutil.Process]], idle: dict[str, float]
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=run.concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(120)) as http:
        # Open the path (connection, first route).
        await _stream(http, url, {**body, "max_tokens": 2}, Run(run.config, 0, 0, 0))
        left = run.requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await _stream(http, url, body, run)

        before = _cpu_by_role(procs)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(run.concurrency)))
        run.seconds = time.perf_counter() - start
        after = _cpu_by_role(procs)
        run.cpu = {role: max(0.0, after[role] - before[role] - idle[role] * run.seconds) for role in procs}


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _cpu_by_role(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    return {role: _cpu(ps) for role, ps in procs.items()}


def _lookup(roles: dict[str, Procs]) -> dict[str, list[psutil.Process]]:
    """Looked up per run: an HAProxy reload is a new process."""
    return {role: find() for role, find in roles.items()}


def idle_cpu(roles: dict[str, Procs], seconds: float = 3.0) -> dict[str, float]:
    """CPU cores each role uses with no requests (health checks, Ray's own loops), so that
    CPU per request at low concurrency is not mostly idle time."""
    procs = _lookup(roles)
    before = _cpu_by_role(procs)
    time.sleep(seconds)
    after = _cpu_by_role(procs)
    return {role: (after[role] - before[role]) / seconds for role in procs}


def measure(run: Run, url: str, roles: dict[str, Procs], idle: dict[str, float], body: dict[str, object]) -> Run:
    asyncio.run(_load(url, run, body, _lookup(roles), idle))
    return run


def service(stream_batching_ms: int | None = None) -> LLMService:
    """The gemma sample with API keys (so the sidecar checks one on every request) and one
    replica that never sheds load: the benchmark measures the path, not Serve's autoscaler."""
    doc = with_spec(
        sample_doc("gemma-b200.yaml"),
        ingress={"apiKeysSecret": "keys"},
        replicas={"min": 1, "max": 1},
        autoscaling={"targetOngoingRequests": 10000, "maxOngoingRequests": 10000},
        routing__streamBatchingMs=stream_batching_ms,  # None: unset, Ray's default
    )
    return parse(doc)


def requests_for(concurrency: int, minimum: int, per_stream: int) -> int:
    return max(minimum, per_stream * concurrency)


def bench(
    concurrencies: list[int],
    *,
    rounds: int = 5,
    requests: int = 32,
    per_stream: int = 4,
    max_tokens: int = 64,
    ttft_ms: float = 20,
    itl_ms: float = 5,
    stream_batching_ms: int | None = None,
    log: Callable[[str], None] = print,
) -> list[Run]:
    svc = service(stream_batching_ms)
    opts = {"api_keys": {KEY: "bench"}, "ttft_ms": ttft_ms, "itl_ms": itl_ms}
    body = chat_body(max_tokens)
    runs: list[Run] = []

    def go(config: str, rnd: int, c: int, url: str, roles: dict[str, Procs], idle: dict[str, float]) -> None:
        run = measure(Run(config, c, rnd, requests_for(c, requests, per_stream)), url, roles, idle, body)
        runs.append(run)
        log(f"  round {rnd} {config} {CONFIGS[config]:<16} c={c:<4} {run.rps:7.1f} req/s  errors={run.errors}")

    for rnd in range(rounds):
        with DataPath(svc, haproxy_ingress=False, sidecar=False, **opts) as dp:
            roles: dict[str, Procs] = {"ray": dp.proxy_processes}
            idle = idle_cpu(roles)
            for c in concurrencies:
                go("a", rnd, c, dp.serve_url, roles, idle)
        with DataPath(svc, **opts) as dp:
            direct = dp.replica_urls()[0]  # also waits until (b) no longer goes via the proxy actor
            both: dict[str, Procs] = {"ray": dp.proxy_processes, "edge": dp.edge_processes}
            idle = idle_cpu(both)
            paths: dict[str, tuple[str, dict[str, Procs]]] = {
                "b": (dp.serve_url, {"ray": dp.proxy_processes}),
                "c": (dp.edge_url, both),
                "d": (direct, {}),
            }
            order = "bcd"[rnd % 3 :] + "bcd"[: rnd % 3]
            for c in concurrencies:
                for config in order:
                    go(config, rnd, c, *paths[config], idle)
    return runs


@dataclass
class Level:
    """All rounds of one config at one concurrency."""

    runs: list[Run]

    def median(self, f: Callable[[Run], float]) -> float:
        return statistics.median(f(r) for r in self.runs)

    def spread(self, f: Callable[[Run], float]) -> tuple[float, float]:
        xs = [f(r) for r in self.runs]
        return min(xs), max(xs)

    def pooled(self, attr: str, p: float) -> float:
        return pct([x for r in self.runs for x in getattr(r, attr)], p)

    def cpu_ms_per_request(self, role: str | None = None) -> float:
        cpu = sum(v for r in self.runs for k, v in r.cpu.items() if role in (None, k))
        return 1000 * cpu / sum(r.requests for r in self.runs)


def _paired(x: list[Run], y: list[Run], f: Callable[[Run, Run], float]) -> tuple[float, float, float]:
    """Median, min, max of f over the rounds both configs ran in."""
    by_round = {r.round: r for r in y}
    vals = [f(a, by_round[a.round]) for a in x if a.round in by_round]
    return statistics.median(vals), min(vals), max(vals)


def _fmt(m: float, lo: float, hi: float, spec: str = ".2f") -> str:
    return f"{m:{spec}} [{lo:{spec}}–{hi:{spec}}]"


def report(runs: list[Run], png: Path | None = None) -> str:
    levels: dict[tuple[str, int], Level] = {}
    for r in runs:
        levels.setdefault((r.config, r.concurrency), Level([])).runs.append(r)
    concs = sorted({r.concurrency for r in runs})
    n_rounds = len({r.round for r in runs})
    lines = [
        f"Medians over {n_rounds} round(s), [min–max] across rounds; latency percentiles pool all rounds.",
        "",
        "| config | conc | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | ITL p99 ms | proxy CPU ms/req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (config, c), lv in sorted(levels.items()):
        rps = _fmt(lv.median(lambda r: r.rps), *lv.spread(lambda r: r.rps), ".1f")
        lines.append(
            f"| {config} {CONFIGS[config]} | {c} | {rps} | {lv.median(lambda r: r.tps):.0f} | "
            f"{lv.pooled('ttft', 50):.1f} | {lv.pooled('ttft', 99):.1f} | {lv.pooled('itl', 99):.1f} | "
            f"{lv.cpu_ms_per_request():.2f} | {sum(r.errors for r in lv.runs)} |"
        )
    lines += [
        "",
        "Paired per round (same Ray for b, c, d; a ran just before b):",
        "",
        "| conc | b/a req/s | c/b req/s | c−b TTFT p99 ms | b/d req/s | sidecar CPU ms/req |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for c in concs:
        got = {k: levels[(k, c)].runs for k in CONFIGS if (k, c) in levels}
        if len(got) < 4:
            continue
        ba = _paired(got["b"], got["a"], lambda b, a: b.rps / a.rps)
        cb = _paired(got["c"], got["b"], lambda x, b: x.rps / b.rps)
        dttft = _paired(got["c"], got["b"], lambda x, b: pct(x.ttft, 99) - pct(b.ttft, 99))
        bd = _paired(got["b"], got["d"], lambda b, d: b.rps / d.rps)
        sidecar = levels[("c", c)].cpu_ms_per_request("edge")
        lines.append(f"| {c} | {_fmt(*ba)} | {_fmt(*cb)} | {_fmt(*dttft, '+.1f')} | {_fmt(*bd)} | {sidecar:.2f} |")
        if c >= 64:
            verdicts.append(f"c={c}: b beats a: {'met' if ba[0] > 1 else 'NOT met'} (median b/a {ba[0]:.2f})")
        cost_ok = cb[0] >= 1 - MAX_SIDECAR_THROUGHPUT_COST
        ttft_ok = dttft[0] <= MAX_SIDECAR_TTFT_P99_MS
        verdicts.append(
            f"c={c}: sidecar ≤{MAX_SIDECAR_THROUGHPUT_COST:.0%} throughput: {'met' if cost_ok else 'NOT met'} "
            f"(median c/b {cb[0]:.2f}); ≤{MAX_SIDECAR_TTFT_P99_MS:g} ms TTFT p99: "
            f"{'met' if ttft_ok else 'NOT met'} (median {dttft[0]:+.1f} ms)"
        )
    if verdicts:
        lines += ["", "Targets:", *(f"- {v}" for v in verdicts)]
    if png:
        _plot(levels, png)
    return "\n".join(lines)


def _plot(levels: dict[tuple[str, int], Level], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for config, name in CONFIGS.items():
        lvs = sorted(((c, lv) for (k, c), lv in levels.items() if k == config), key=lambda t: t[0])
        if not lvs:
            continue
        xs = [c for c, _ in lvs]
        tps = [lv.median(lambda r: r.tps) for _, lv in lvs]
        err = [[t - lv.spread(lambda r: r.tps)[0] for t, (_, lv) in zip(tps, lvs, strict=True)],
               [lv.spread(lambda r: r.tps)[1] - t for t, (_, lv) in zip(tps, lvs, strict=True)]]  # fmt: skip
        label = f"{config} {name}"
        axes[0].errorbar(xs, tps, yerr=err, marker="o", capsize=3, label=label)
        axes[1].plot(xs, [lv.pooled("ttft", 99) for _, lv in lvs], marker="o", label=label)
        if config != "d":
            axes[2].plot(xs, [lv.cpu_ms_per_request() for _, lv in lvs], marker="o", label=label)
    titles = ("output tokens/s (median, min–max)", "TTFT p99 (ms)", "proxy CPU per request (ms)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.suptitle("LLMService request path on CPU (stand-in engine), 2 cores")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def engine_service() -> LLMService:
    """The CPU sample (tiny Llama, API keys on the edge) with one replica that never sheds load."""
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"),
        replicas={"min": 1, "max": 1},
        autoscaling={"targetOngoingRequests": 10000, "maxOngoingRequests": 10000},
    )
    return parse(doc)


def bench_engine(
    concurrencies: list[int],
    *,
    rounds: int = 3,
    requests: int = 16,
    per_stream: int = 4,
    max_tokens: int = 64,
    log: Callable[[str], None] = print,
) -> list[Run]:
    """(b), (c), (d) in front of real vLLM. One Ray for every round (vLLM takes a minute or
    two to start on 2 cores); the configs take turns at each level as in `bench`. Every
    request generates exactly `max_tokens` (`ignore_eos`: random weights may pick EOS early)."""
    runs: list[Run] = []
    body = chat_body(max_tokens, ENGINE_MODEL, ignore_eos=True, stream_options={"include_usage": True})
    start = time.monotonic()
    with DataPath(engine_service(), api_keys={KEY: "bench"}, engine="vllm") as dp:
        log(f"  real engine up in {time.monotonic() - start:.0f} s")
        both: dict[str, Procs] = {"ray": dp.proxy_processes, "edge": dp.edge_processes}
        paths: dict[str, tuple[str, dict[str, Procs]]] = {
            "b": (dp.serve_url, {"ray": dp.proxy_processes}),
            "c": (dp.edge_url, both),
            "d": (dp.replica_urls()[0], {}),
        }
        idle = idle_cpu(both)
        for rnd in range(rounds):
            order = "bcd"[rnd % 3 :] + "bcd"[: rnd % 3]
            for c in concurrencies:
                for config in order:
                    run = Run(config, c, rnd, requests_for(c, requests, per_stream))
                    measure(run, *paths[config], idle, body)
                    runs.append(run)
                    log(
                        f"  round {rnd} {config} {ENGINE_CONFIGS[config]:<16} c={c:<4} {run.tps:7.1f} tok/s  "
                        f"TTFT p50 {pct(run.ttft, 50):6.1f} ms  errors={run.errors}"
                    )
    return runs


def report_engine(runs: list[Run]) -> str:
    """The real-engine phase: (b), (c), (d) side by side per concurrency, with paired ratios."""
    levels: dict[tuple[str, int], Level] = {}
    for run in runs:
        levels.setdefault((run.config, run.concurrency), Level([])).runs.append(run)
    n_rounds = len({run.round for run in runs})
    names = ", ".join(f"{k} {v}" for k, v in ENGINE_CONFIGS.items())
    lines = [
        f"REAL ENGINE: vLLM (CPU) under Ray Serve LLM, {ENGINE_MODEL} (random weights), one replica; {names}.",
        f"Medians over {n_rounds} round(s); ratios paired per round, [min–max]; TTFT pools all rounds.",
        "",
        "| conc | out tok/s b / c / d | TTFT p50 ms b / c / d | TTFT p99 ms b / c / d "
        "| b/d tok/s | c/d tok/s | c/b tok/s | c−b TTFT p50 ms | proxy CPU ms/req b / c | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in sorted({run.concurrency for run in runs}):
        got = {k: levels[(k, c)] for k in ENGINE_CONFIGS if (k, c) in levels}
        if len(got) < len(ENGINE_CONFIGS):
            continue
        b, x, d = got["b"].runs, got["c"].runs, got["d"].runs
        tps = _side(got, lambda lv: lv.median(lambda r: r.tps), ".0f")
        p50 = _side(got, lambda lv: lv.pooled("ttft", 50), ".1f")
        p99 = _side(got, lambda lv: lv.pooled("ttft", 99), ".1f")
        bd = _paired(b, d, lambda u, v: u.tps / v.tps)
        cd = _paired(x, d, lambda u, v: u.tps / v.tps)
        cb = _paired(x, b, lambda u, v: u.tps / v.tps)
        dttft = _paired(x, b, lambda u, v: pct(u.ttft, 50) - pct(v.ttft, 50))
        cpu = f"{got['b'].cpu_ms_per_request():.2f} / {got['c'].cpu_ms_per_request():.2f}"
        errors = sum(run.errors for lv in got.values() for run in lv.runs)
        lines.append(
            f"| {c} | {tps} | {p50} | {p99} | {_fmt(*bd)} | {_fmt(*cd)} | {_fmt(*cb)} | {_fmt(*dttft, '+.1f')} "
            f"| {cpu} | {errors} |"
        )
    return "\n".join(lines)


def _side(levels: dict[str, Level], f: Callable[[Level], float], spec: str) -> str:
    return " / ".join(f"{f(levels[k]):{spec}}" for k in ENGINE_CONFIGS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--rounds", type=int, default=5, help="fresh Ray clusters per config; report medians")
    p.add_argument("--requests", type=int, default=32, help="requests per level, at least")
    p.add_argument("--per-stream", type=int, default=4, help="requests per concurrent stream, at least")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ttft-ms", type=float, default=20)
    p.add_argument("--itl-ms", type=float, default=5)
    p.add_argument(
        "--stream-batching-ms", type=int, default=None,
        help="spec.routing.streamBatchingMs (default: unset, so Ray Serve LLM's 50 ms)",
    )  # fmt: skip
    p.add_argument("--png", type=Path, default=Path("bench-dataplane.png"))
    p.add_argument(
        "--engine", choices=("both", "standin", "vllm"), default="both",
        help="which phases: the stand-in engine (a)-(d), the real vLLM engine (b)-(d), or both",
    )  # fmt: skip
    p.add_argument("--engine-concurrency", default="1,8", help="real engine: concurrent streams")
    p.add_argument("--engine-rounds", type=int, default=3, help="real engine: rounds (one Ray for all)")
    p.add_argument("--engine-max-tokens", type=int, default=64, help="real engine: tokens per request")
    a = p.parse_args()
    start = time.monotonic()
    if a.engine in ("both", "standin"):
        runs = bench(
            [int(c) for c in a.concurrency.split(",")],
            rounds=a.rounds, requests=a.requests, per_stream=a.per_stream,
            max_tokens=a.max_tokens, ttft_ms=a.ttft_ms, itl_ms=a.itl_ms, stream_batching_ms=a.stream_batching_ms,
        )  # fmt: skip
        print(report(runs, a.png))
        print(f"\nplot: {a.png}; {time.monotonic() - start:.0f} s\n")
    if a.engine in ("both", "vllm"):
        t = time.monotonic()
        runs = bench_engine(
            [int(c) for c in a.engine_concurrency.split(",")], rounds=a.engine_rounds, max_tokens=a.engine_max_tokens
        )
        print(report_engine(runs))
        print(f"\nreal engine: {time.monotonic() - t:.0f} s")


if __name__ == "__main__":
    main()
