"""The data-path benchmark's report: paired ratios, spread and target verdicts (pure)."""

from __future__ import annotations

from e2e.dataplane.bench import Run, pct, report, report_engine


def run(config: str, rnd: int, seconds: float, ttft_ms: float, cpu: dict[str, float] | None = None) -> Run:
    return Run(config, 64, rnd, requests=100, seconds=seconds, tokens=6400, ttft=[ttft_ms / 1000] * 100,
               itl=[0.005] * 6300, cpu=cpu or {})  # fmt: skip


def rounds(c_seconds: float, c_ttft: float) -> list[Run]:
    out = []
    for rnd, jitter in enumerate((1.0, 1.1, 0.9)):  # drift that hits every config of a round alike
        out += [
            run("a", rnd, 2.0 * jitter, 300),
            run("b", rnd, 1.0 * jitter, 50, {"ray": 0.05}),
            run("c", rnd, c_seconds * jitter, c_ttft, {"ray": 0.05, "edge": 0.1}),
            run("d", rnd, 0.9 * jitter, 45),
        ]
    return out


def test_paired_ratios_cancel_drift_and_targets_pass():
    text = report(rounds(c_seconds=1.02, c_ttft=51))
    row = next(line for line in text.splitlines() if line.startswith("| 64 | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2.00 [2.00–2.00]"  # b/a: same in every round despite the drift
    assert cells[2].startswith("0.98 ")  # c/b
    assert cells[3].startswith("+1.0 ")  # c-b TTFT p99
    assert cells[5] == "1.00"  # sidecar CPU: 0.1 s over 100 requests
    assert "c=64: b beats a: met" in text
    assert "sidecar ≤5% throughput: met" in text and "≤2 ms TTFT p99: met" in text


def test_targets_missed_are_reported():
    text = report(rounds(c_seconds=1.2, c_ttft=60))
    assert "sidecar ≤5% throughput: NOT met (median c/b 0.83)" in text
    assert "≤2 ms TTFT p99: NOT met (median +10.0 ms)" in text


def test_percentile_is_nearest_rank_in_ms():
    assert pct([0.001 * i for i in range(1, 101)], 99) == 100.0
    assert pct([], 50) != pct([], 50)  # NaN when a run got no tokens


def test_real_engine_report_puts_paths_side_by_side_with_paired_ratios():
    runs = []
    paths = (("b", 1.1, 52, {"ray": 0.016}), ("c", 1.1, 53, {"ray": 0.016, "edge": 0.016}), ("d", 1.0, 50, {}))
    for rnd, jitter in enumerate((1.0, 1.2)):  # drift that hits every config of a round alike
        for config, seconds, ttft, cpu in paths:
            runs.append(Run(config, 8, rnd, requests=16, seconds=seconds * jitter, tokens=1024,
                            ttft=[ttft / 1000] * 16, cpu=cpu))  # fmt: skip
    text = report_engine(runs)
    assert text.startswith("REAL ENGINE: vLLM")
    row = next(line for line in text.splitlines() if line.startswith("| 8 | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "853 / 853 / 939"  # median out tok/s of b, c, d over the two rounds
    assert cells[2] == "52.0 / 53.0 / 50.0"  # TTFT p50
    assert cells[4] == "0.91 [0.91–0.91]"  # b/d, paired per round: the drift cancels
    assert cells[6] == "1.00 [1.00–1.00]"  # c/b
    assert cells[7].startswith("+1.0 ")  # c-b TTFT p50
    assert cells[8] == "1.00 / 2.00" and cells[9] == "0"  # proxy CPU per request, errors


def test_gke_phase_verdicts_follow_the_numbers():
    from e2e.bench_gke import GkeResult
    from e2e.bench_gke import report as gke_report

    good = [GkeResult(10, create_s=21, delete_s=22), GkeResult(10, create_s=44, delete_s=21, storm_s=20, resume_s=4)]
    text = gke_report(good)
    assert "| N=10 | N=10, 20 s storm |" in text and text.count(": met") == 3
    slow = [GkeResult(10, create_s=21, delete_s=-1, left_pools=3), good[1]]
    text = gke_report(slow)
    assert "not done" in text and "| 3 / 0 |" in text
    assert "N x the operation time + 10 s: NOT met" in text and "orphaned pools: NOT met" in text
