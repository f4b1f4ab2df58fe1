"""Session-scoped local cluster shared by every e2e test (and later issues' tests).

Order: the API-level modules run first while the CPU service of test_serving.py deploys on
the real node in the background (it takes minutes: a Ray cluster and vLLM on 2 cores); then
test_serving.py; the host-side data-path modules while its upgrade's old cluster goes (then
test_serving_end.py deletes the service), the real-vLLM data path while it goes, and
test_serving_gone.py. The real-pod stories, when they run, come after.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from e2e import incluster, serving
from e2e.build import image
from e2e.cluster import SERVING_NAMESPACES, Cluster
from e2e.operator import Operator
from e2e.prometheus import Prometheus
from e2e.story import Story
from testkit.fake_gke import FakeGKE, FakeGKEServer

ROOT = Path(__file__).resolve().parents[2]
# Numbers the end-to-end tests measure on the real node, printed after the run.
MEASURED: dict[str, object] = {}
SERVED_END = "test_serving_end.py"  # the served sample's upgrade finished, and its delete
SERVED_GONE = "test_serving_gone.py"  # ... and what the delete removed, checked last


def until(what: str, check: Callable[[], bool], limit_s: float = 60, poll_s: float = 0.05) -> float:
    """Seconds until `check()` holds (what tests measure, such as how soon a change took effect)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit_s, f"not within {limit_s} s: {what}"
        time.sleep(poll_s)
    return time.monotonic() - start


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("measured on the local cluster's real node")
        for what, value in MEASURED.items():
            terminalreporter.write_line(f"{what:<60} {value}")


# test_serving_end.py after test_dataplane.py: the upgrade's old cluster goes meanwhile (about
# 100 s of KubeRay's delay and the pods' drain, little CPU), not while the suite waits; and its
# delete goes while test_dataplane_vllm.py runs (test_serving_gone.py checks it). (`make test`
# runs those two data-path modules in a pytest of their own beside this one.)
_LAST = ("test_in_cluster_operator.py", "test_serving.py", "test_dataplane.py", SERVED_END, "test_dataplane_vllm.py",
         SERVED_GONE, "test_model_sources.py", "test_failures.py", "test_switches.py", "test_sidecar_off.py",
         "test_hub_model.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return 1 + _LAST.index(name) if name in _LAST and "e2e" in item.path.parts else 0

    items.sort(key=rank)  # stable: file order within a rank


# Real-pod scenarios that start with the session (in the background) when their tests will run.
EARLY = {
    "test_serving.py": "cpu_service",
    "test_failures.py": "failed",
    "test_switches.py": "switched",
    "test_sidecar_off.py": "unsidecared",
    "test_hub_model.py": "hubbed",
}


@pytest.fixture(scope="session", autouse=True)
def _deploy_the_served_services_early(request: pytest.FixtureRequest) -> None:
    names = {i.path.name for i in request.session.items}
    for module, fixture in EARLY.items():
        if module in names:
            request.getfixturevalue(fixture)


SERVED_NS = "serving"  # the namespace of the CPU service, reconciled by the in-cluster operator
SOURCES_NS = "serving-sources"  # test_model_sources.py's services


@pytest.fixture(scope="session")
def in_cluster(cluster: Cluster, operator: Operator) -> Iterator[concurrent.futures.Future[incluster.InCluster]]:
    """The operator as users run it (its image, the Helm chart: 2 replicas with peering, the
    chart's ServiceAccount and RBAC), watching the served namespace; installed in the
    background as soon as its image is in the node. (The suite's own operator, a process
    with admin rights, works every other namespace.)"""

    def install() -> incluster.InCluster:
        cluster.wait_images(image.OPERATOR)
        settings = {"secretRefreshSeconds": 2, "retryDelaySeconds": 2, "retryMaxDelaySeconds": 2}
        op = incluster.InCluster(cluster, incluster.local_values(cluster, list(SERVING_NAMESPACES), settings))
        cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in SERVING_NAMESPACES])
        MEASURED["in-cluster operator: helm install -> rolled out (s)"] = round(op.install(), 1)
        return op

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="in-cluster") as pool:
        yield pool.submit(install)


@pytest.fixture(scope="session")
def cpu_service(
    cluster: Cluster, in_cluster: concurrent.futures.Future[incluster.InCluster]
) -> Iterator[concurrent.futures.Future[serving.Applied]]:
    """The CPU sample with multi-LoRA (fake S3), GCS fault tolerance (Redis) and API keys,
    applied once, in the background as soon as the serving image is in the node and the
    in-cluster operator runs (the first tests run meanwhile): test_serving.py waits for it
    and then exercises it."""

    def apply() -> serving.Applied:
        def ready() -> None:
            cluster.wait_images()
            in_cluster.result(timeout=600)

        # A short drain (the suite's requests take well under a second), long enough for the
        # rate-limit burst over the old and the new cluster's pods after the upgrade's switch.
        return serving.apply_cpu_service(cluster, SERVED_NS, drain_seconds=30, before_apply=ready)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cpu-service") as pool:
        yield pool.submit(apply)


def _background(
    cluster: Cluster,
    in_cluster: concurrent.futures.Future[incluster.InCluster],
    name: str,
    module: str,
    after: Callable[[], object] = lambda: None,
) -> Story:
    """Start the scenario of `e2e/tests/<module>` (its STEPS and its `scenario`) in a thread, once
    the images and the in-cluster operator are there and `after()` returned (or failed: that
    scenario's own tests say why): the node's 2 cores hold only so many real-pod scenarios at
    once."""
    mod = importlib.import_module(f"{__package__}.{module}")

    def scenario(story: Story) -> None:
        cluster.wait_images()
        in_cluster.result(timeout=600)
        with contextlib.suppress(Exception):
            after()
        mod.scenario(cluster, story)

    return Story(name, mod.STEPS).run(scenario)


def _cleaned_after(cluster: Cluster, story: Story, step: str, namespace: str) -> Callable[[], object]:
    """Until `story` reached `step`; if it stopped before, its services are deleted."""

    def wait() -> None:
        try:
            story.result(step, timeout=1800)
        except AssertionError:
            cluster.kubectl("delete", "llmsvc", "--all", "-n", namespace, "--wait=false", check=False)
            raise

    return wait


# Set when the served sample is gone (test_serving_gone.py's module fixture's teardown): its
# upgrade runs two Ray clusters of the sample, and the node's 24 GiB do not hold another
# service's two.
SERVED_DONE = threading.Event()


def _serving_in(request: pytest.FixtureRequest, module: str = SERVED_GONE) -> bool:
    return any(i.path.name == module for i in request.session.items)


@pytest.fixture(scope="session")
def failed(
    request: pytest.FixtureRequest, cluster: Cluster, in_cluster: concurrent.futures.Future[incluster.InCluster]
) -> Iterator[Story]:
    """test_failures.py's services, once the served sample (when its tests run) is Ready: two
    vLLM engines starting at once take this machine's 2 cores, three starve."""
    served = request.getfixturevalue("cpu_service") if _serving_in(request, "test_serving.py") else None

    def after() -> None:
        if served is not None:
            served.result(1200)
            serving.wait_ready(cluster, SERVED_NS, serving.SERVICE, timeout=1200)

    story = _background(cluster, in_cluster, "failures", "test_failures", after=after)
    yield story
    story.join(5)


@pytest.fixture(scope="session")
def switched(
    request: pytest.FixtureRequest, cluster: Cluster, in_cluster: concurrent.futures.Future[incluster.InCluster]
) -> Iterator[Story]:
    """test_switches.py's service, once test_serving.py is done (when it runs): the sample's
    upgrade and this service's second replica do not fit the node's memory at once."""
    waits = _serving_in(request)
    failures = request.getfixturevalue("failed") if _serving_in(request, "test_failures.py") else None

    def after() -> None:
        if waits:
            SERVED_DONE.wait(3600)
        if failures is not None:  # one vLLM engine starting at a time
            _cleaned_after(cluster, failures, "cleaned", "serving-fail")()

    story = _background(cluster, in_cluster, "switches", "test_switches", after=after)
    yield story
    story.join(5)


@pytest.fixture(scope="session")
def unsidecared(
    request: pytest.FixtureRequest, cluster: Cluster, in_cluster: concurrent.futures.Future[incluster.InCluster]
) -> Iterator[Story]:
    """test_sidecar_off.py's service, once the switches scenario (when it runs) is back to one
    replica: its two 4 GiB replicas and this service's two Ray clusters during the switch do not
    fit the node's memory at once (vLLM then found 0.67 GiB free for a 1 GiB KV cache)."""
    before = request.getfixturevalue("switched") if _serving_in(request, "test_switches.py") else None
    after = _cleaned_after(cluster, before, "down", "serving-switches") if before else (lambda: None)
    story = _background(cluster, in_cluster, "sidecar-off", "test_sidecar_off", after=after)
    yield story
    story.join(5)


@pytest.fixture(scope="session")
def hubbed(
    request: pytest.FixtureRequest, cluster: Cluster, in_cluster: concurrent.futures.Future[incluster.InCluster]
) -> Iterator[Story]:
    """test_hub_model.py's service, once the sidecar-off story is done (when it runs): its two
    Ray clusters while the fix rolls out need the memory that story's switch holds."""
    before = request.getfixturevalue("unsidecared") if _serving_in(request, "test_sidecar_off.py") else None
    after = _cleaned_after(cluster, before, "sidecar-off", "serving-plain") if before else (lambda: None)
    story = _background(cluster, in_cluster, "hub", "test_hub_model", after=after)
    yield story
    story.join(5)


def measured_cluster_start(cluster: Cluster) -> None:
    MEASURED.update({f"cluster start: {k} (s)": round(v, 1) for k, v in cluster.timings.items() if v >= 1})


@dataclass
class Served:
    """The CPU service, Ready: what test_in_cluster_operator.py and test_serving.py exercise."""

    cluster: Cluster
    url: str
    lora: str  # the adapter's model id: <model>:<adapter folder>
    operator: incluster.InCluster
    prometheus: Prometheus
    stores: serving.Stores
    client: openai.OpenAI = field(init=False)
    # What a test of test_serving.py leaves running for test_serving_end.py to finish (the
    # upgrade's old cluster going), and what the session stops if that module does not run.
    handover: dict[str, Any] = field(default_factory=dict)
    finally_stop: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = serving.client(self.url)

    def rayservice(self) -> dict[str, Any]:
        return self.cluster.get_json("rayservice", serving.SERVICE, "-n", SERVED_NS)

    def pods(self, selector: str = f"llmservice.dev/name={serving.SERVICE}") -> list[dict[str, Any]]:
        return self.cluster.get_json("pods", "-n", SERVED_NS, "-l", selector)["items"]


@pytest.fixture(scope="session")
def prometheus(cluster: Cluster) -> Iterator[Prometheus]:
    """A real Prometheus scraping the real node's pods as the operator's PodMonitoring says."""
    prom = Prometheus(cluster).start()
    yield prom
    prom.stop()


@pytest.fixture(scope="session")
def served(
    cluster: Cluster,
    cpu_service: concurrent.futures.Future[serving.Applied],
    in_cluster: concurrent.futures.Future[incluster.InCluster],
    prometheus: Prometheus,
) -> Iterator[Served]:
    applied = cpu_service.result(timeout=600)
    measured_cluster_start(cluster)  # with the serving image's import, done meanwhile
    serving.wait_ready(cluster, SERVED_NS, serving.SERVICE, timeout=900)
    # Applied at the session's start: other tests ran meanwhile, on the same cores.
    MEASURED["apply -> LLMService Ready, beside other tests (s)"] = round(time.monotonic() - applied.applied, 1)
    MEASURED["memory of the whole cluster, CPU service serving (GiB, PSS)"] = round(cluster.memory_pss() / 2**30, 1)
    url = f"http://{serving.service_ip(cluster, SERVED_NS, serving.SERVICE)}:8000/v1"
    served = Served(cluster, url, applied.lora_model, in_cluster.result(), prometheus, applied.stores)
    yield served
    for stop in served.finally_stop:
        stop()
    cluster.kubectl(
        "delete", "llmsvc", serving.SERVICE, "-n", SERVED_NS, "--ignore-not-found", "--wait=false", check=False
    )


@pytest.fixture(scope="session")
def sourced(cluster: Cluster, served: Served) -> Iterator[Story]:
    """test_model_sources.py's services (a Hub id; a missing bucket), in the background from when
    test_serving_end.py asks for them: while the served sample's upgrade drains its old cluster
    and the sample is deleted, instead of after."""
    from . import test_model_sources as mod

    story = Story("sources", mod.STEPS).run(lambda s: mod.scenario(cluster, s, served.stores.model_spec["storage"]))
    yield story
    story.join(5)


# The cluster starts as soon as the run is known to need it, in a thread, so that its start
# (processes, image import) overlaps the unit tests, which run first. With E2E_KUBECONFIG the
# suite starts no cluster: it drives the one that kubeconfig reaches (this machine's, started
# by `python -m e2e.cluster up` as `make test` does, or a kind or GKE cluster), waiting for the
# file if its cluster is still starting, and brings in what is missing (images, the CRD, the
# operator's chart).
KUBECONFIG = os.environ.get("E2E_KUBECONFIG")
IMAGES = (image.OPERATOR, image.RAY_CPU)  # what the tests run, besides the node's own
_starting: concurrent.futures.Future[Cluster] | None = None


def _attach() -> Cluster:
    assert KUBECONFIG
    c = Cluster.attach(Path(KUBECONFIG))
    c.load_images(IMAGES)
    return c


def pytest_collection_finish(session: pytest.Session) -> None:
    global _starting
    if any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cluster-start")
        _starting = pool.submit(_attach if KUBECONFIG else Cluster(images_in_background=True).start)
        pool.shutdown(wait=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_cluster: needs this machine's local cluster, not any kubeconfig's")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests of what only this machine's cluster has (its audit log, node, simulated GKE
    nodes, its own control plane) skip on another cluster."""
    if item.get_closest_marker("local_cluster") and _starting is not None and not _starting.result().local:
        pytest.skip("needs this machine's local cluster (audit log, node, simulated GKE nodes)")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A cluster started for tests that never ran (interrupted, or all skipped) goes too."""
    if _starting is not None and not _starting.cancelled() and _starting.exception() is None:
        _starting.result().stop()  # idempotent: the fixture may have stopped it already


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = _starting.result() if _starting is not None else Cluster(images_in_background=True).start()
    try:  # stop() runs even when a test fails or is interrupted
        measured_cluster_start(c)
        yield c
    finally:
        c.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kuberay_namespace(cluster: Cluster) -> Iterator[str]:
    """The namespace the real KubeRay operator watches; emptied after each test so the next
    one finds the simulated nodes free."""
    name = "kuberay"
    if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", name)
    yield name
    for kind in ("llmservices.llmservice.dev", "rayservices.ray.io"):
        cluster.kubectl("delete", kind, "--all", "-n", name, "--ignore-not-found", "--wait=false", check=False)
    cluster.wait_for(
        "the kuberay namespace to empty",
        lambda: (
            not cluster.get_json("pods", "-n", name)["items"]
            and not cluster.get_json("rayclusters", "-n", name)["items"]
        ),
        timeout=90,
    )


@pytest.fixture(scope="session")
def fake_gke() -> Iterator[FakeGKEServer]:
    """The GKE API stand-in the suite's operator manages node pools through."""
    with FakeGKEServer(FakeGKE(op_seconds=1.0)) as server:
        yield server


GKE_PARENT = "projects/e2e-project/locations/us-central1/clusters/e2e"


@pytest.fixture(scope="session")
def operator(cluster: Cluster, fake_gke: FakeGKEServer) -> Iterator[Operator]:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmservice.dev_llmservices.yaml"))
    cluster.wait_established(["llmservices.llmservice.dev"])
    gke_env = {
        **serving.OPERATOR_ENV,
        "LLMSERVICE_GKE__PROJECT": "e2e-project",
        "LLMSERVICE_GKE__LOCATION": "us-central1",
        "LLMSERVICE_GKE__CLUSTER": "e2e",
        "LLMSERVICE_GKE__ENDPOINT": fake_gke.endpoint,
    }
    # Every namespace but the real-pod tests' (serving, serving-*), which the in-cluster operator works.
    op = Operator(cluster, args=("--log-format", "text", "-n", "!serving, !serving-*"), env=gke_env)
    op.start()
    yield op
    op.stop()
