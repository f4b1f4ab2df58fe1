"""Test tiers with time budgets (a pytest plugin, loaded by the root conftest.py).

- unit: pure, no subprocess, no cluster; a few seconds per test at most.
- component: real binaries and libraries (helm, haproxy, promtool, Ray's own models, the CLI).
- cluster: the local control plane (real API server, KubeRay, scheduler, simulated GKE pools).
- serving: the real node running Ray Serve and vLLM.

Every test gets its tier as a marker: from its own marker, else from its module
(COMPONENT_MODULES, SERVING_MODULES), else from where it lives (tests/: unit, e2e/tests/:
cluster). `make test-unit` runs `-m unit`. Each test has a timeout by tier (pytest-timeout), so a
hang fails that test, not the whole run. Every run writes JUnit XML and the per-test durations
(.test-results/: junit.xml, durations.json), and fails naming the tier whose tests took longer than its budget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

TIERS = ("unit", "component", "cluster", "serving")
# Seconds of test time (setup + call + teardown) per tier in one pytest run, on a 2-core
# machine; and each test's timeout. `make test` runs two pytests side by side (the host's and
# the cluster's), so each test shares the cores with the other run's.
BUDGET = {"unit": 60, "component": 400, "cluster": 400, "serving": 1000}
# Measured 2026-12-07, warm, this machine, `make test`: host unit 24.4, component 281.2, cluster
# 89.7, serving 165.1 s; cluster component 9.0, cluster 215.7, serving 357.8 s (one pytest
# alone before: unit 11.4, component 238.0, cluster 238.9, serving 347.2 s).
TIMEOUT = {"unit": 10, "component": 180, "cluster": 300, "serving": 900}
# Modules of tests/ that run real binaries or import Ray.
COMPONENT_MODULES = {
    "test_chart.py",  # helm
    "test_cli.py",  # the llmservice command, as a process
    "test_edge_haproxy.py",  # haproxy
    "test_images.py",  # the image recipes
    "test_operator_archive.py",  # the built operator image archive
    "test_monitoring.py",  # promtool
    "test_render.py",  # goldens through the CLI, Ray's LLMConfig, KubeRay's CRD schema
    "test_tiny_model.py",  # tokenizers, safetensors, transformers' chat template
    "test_dataplane.py",  # Ray Serve, HAProxy and the engine stand-in on this host
    "test_validate_agrees.py",
    "test_gke_pools.py",  # the real google-cloud clients over REST against the fake GKE server
    "test_gke_ops.py",
}
# Modules of e2e/tests/ that need the real node.
SERVING_MODULES = {
    "test_serving.py",
    "test_serving_end.py",
    "test_serving_gone.py",
    "test_in_cluster_operator.py",
    "test_dataplane_vllm.py",
    "test_failures.py",
    "test_switches.py",
    "test_sidecar_off.py",
    "test_hub_model.py",
    "test_model_sources.py",
}
RESULTS = Path(os.environ.get("LLMSERVICE_TEST_RESULTS", ".test-results"))


def tier_of(item: pytest.Item) -> str:
    for t in TIERS:
        if item.get_closest_marker(t):
            return t
    name, parts = item.path.name, item.path.parts
    if name in SERVING_MODULES and "e2e" in parts:
        return "serving"
    if name in COMPONENT_MODULES:
        return "component"
    return "cluster" if "e2e" in parts else "unit"


class Tiers:
    def __init__(self) -> None:
        self.totals = dict.fromkeys(TIERS, 0.0)
        self.tests: list[dict[str, object]] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            t = tier_of(item)
            if not item.get_closest_marker(t):
                item.add_marker(getattr(pytest.mark, t))
            if not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(TIMEOUT[t]))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        t = next((t for t in TIERS if t in report.keywords), "unit")
        self.totals[t] += report.duration
        self.tests.append(
            {"test": report.nodeid, "tier": t, "phase": report.when, "seconds": round(report.duration, 3)}
        )

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        ran = {t: s for t, s in self.totals.items() if s > 0}
        if not ran:
            return
        terminalreporter.section("test tiers: time against budget")
        for t, seconds in ran.items():
            verdict = "OVER BUDGET" if seconds > BUDGET[t] else "ok"
            terminalreporter.write_line(f"{t:<10} {seconds:7.1f} s of {BUDGET[t]:4d} s  {verdict}")
        summary = {"tiers": {t: round(s, 1) for t, s in ran.items()}, "budgets": BUDGET, "tests": self.tests}
        (RESULTS / "durations.json").write_text(json.dumps(summary, indent=1))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        over = [t for t, s in self.totals.items() if s > BUDGET[t]]
        if over and exitstatus == 0 and os.environ.get("LLMSERVICE_TEST_BUDGETS", "1") != "0":
            for t in over:
                print(f"\nthe {t} tier took {self.totals[t]:.0f} s, over its budget of {BUDGET[t]} s")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    for t in TIERS:
        config.addinivalue_line("markers", f"{t}: the {t} test tier (testkit/tiers.py)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    config.pluginmanager.register(Tiers(), "llmservice-tiers")
