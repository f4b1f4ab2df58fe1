"""Status derived from the RayService: every phase a user can see."""

from __future__ import annotations

from llmservice_operator.api import parse
from llmservice_operator.render import status as st
from llmservice_operator.settings import OperatorSettings

from .conftest import sample_doc, with_spec

SETTINGS = OperatorSettings()
GEMMA = parse(sample_doc("gemma-b200.yaml"))


def rayservice(ready: bool = True, app: str = "RUNNING", upgrading: bool = False, seen: bool = True) -> dict:
    conds = [
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints",
            "message": "",
        }
    ]
    if upgrading:
        conds.append({"type": "UpgradeInProgress", "status": "True", "message": "pending cluster starting"})
    return {
        "metadata": {"name": "gemma", "generation": 2},
        "status": {
            "observedGeneration": 2 if seen else 1,
            "conditions": conds,
            "numServeEndpoints": 8 if ready else 0,
            "activeServiceStatus": {
                "rayClusterName": "gemma-abcde",
                "applicationStatuses": {"llm": {"status": app, "message": "boom" if app != "RUNNING" else ""}},
                "rayClusterStatus": {"readyWorkerReplicas": 8 if ready else 3, "desiredWorkerReplicas": 8},
            },
        },
    }  # fmt: skip


def status(rs, problems=(), svc=GEMMA, previous=None, now="2026-01-01T00:00:00Z"):
    return st.status(svc, st.Observed(3, rs, list(problems)), SETTINGS, previous or {}, now).to_dict()


def cond(s, t):
    return next(c for c in s["conditions"] if c["type"] == t)


def test_ready_when_kuberay_serves():
    s = status(rayservice())
    assert s["phase"] == "Ready"
    assert cond(s, "Ready")["status"] == "True" and cond(s, "Ready")["reason"] == "ServingTraffic"
    assert cond(s, "Progressing")["status"] == "False" and cond(s, "Degraded")["status"] == "False"
    assert s["endpoint"] == "http://gemma.default.svc:8000/v1"
    assert s["replicas"] == {"ready": 8, "desired": 8}
    assert s["observedGeneration"] == 3 and all(c["observedGeneration"] == 3 for c in s["conditions"])
    assert s["children"]["rayCluster"] == "gemma-abcde"


def test_ready_through_an_upgrade_while_only_the_pending_cluster_reports_apps():
    """KubeRay 1.6 during a NewCluster upgrade: Ready stays True (the old cluster serves), the
    active cluster's applicationStatuses disappear. The service must not flap to Provisioning."""
    rs = rayservice(upgrading=True)
    del rs["status"]["activeServiceStatus"]["applicationStatuses"]
    s = status(rs)
    assert s["phase"] == "Ready" and cond(s, "Ready")["status"] == "True"
    assert cond(s, "Progressing")["status"] == "True" and cond(s, "Progressing")["reason"] == "Upgrading"
    # Without an upgrade, no applications means nothing is known to serve yet.
    rs = rayservice()
    del rs["status"]["activeServiceStatus"]["applicationStatuses"]
    assert status(rs)["phase"] == "Provisioning"


def test_ready_replicas_come_from_the_active_raycluster():
    """KubeRay does not rewrite the RayService when only its copy of the cluster status
    changes: live, it said 0 ready workers while the service answered. The RayCluster knows."""
    rs = rayservice()
    rs["status"]["activeServiceStatus"]["rayClusterStatus"] = {"desiredWorkerReplicas": 8}
    cluster = {"status": {"readyWorkerReplicas": 8, "desiredWorkerReplicas": 8}}
    s = st.status(GEMMA, st.Observed(3, rs, [], ray_cluster=cluster), SETTINGS, {}, "2026-01-01T00:00:00Z").to_dict()
    assert s["replicas"] == {"ready": 8, "desired": 8}
    assert status(rs)["replicas"] == {"ready": 0, "desired": 8}  # without it, the stale copy


def test_provisioning_until_endpoints():
    s = status(rayservice(ready=False, app="DEPLOYING"))
    assert s["phase"] == "Provisioning" and s.get("endpoint") is None
    assert cond(s, "Progressing")["reason"] == "Deploying"
    assert s["replicas"] == {"ready": 3, "desired": 8}


def test_a_serving_app_that_serve_updates_stays_ready_while_progressing():
    """A config change to a running service (more replicas, say): Serve deploys it while the
    running replicas answer. Seen on the real node: 3 minutes of Provisioning, Ready False,
    for a scale-up that dropped no request."""
    s = status(rayservice(ready=True, app="DEPLOYING"))
    assert s["phase"] == "Ready" and cond(s, "Ready")["status"] == "True"
    assert cond(s, "Progressing")["status"] == "True" and "updating llm" in cond(s, "Progressing")["message"]
    assert s["endpoint"] is not None


def test_failed_application_is_degraded_with_rays_message():
    s = status(rayservice(ready=False, app="DEPLOY_FAILED"))
    assert s["phase"] == "Degraded"
    assert cond(s, "Degraded")["reason"] == "ServeApplicationFailed" and "boom" in cond(s, "Degraded")["message"]


def test_a_failing_new_cluster_is_degraded_with_the_exception_line():
    """Seen on the real node: Serve's build of the app failed in the pending cluster (the only
    one, on first deploy); KubeRay reports it under pendingServiceStatus with a traceback."""
    trace = 'Traceback (most recent call last):\n  File "builder.py", line 113\nValueError: needs FORWARD_BODY=1.\n'
    rs = rayservice(ready=False)
    del rs["status"]["activeServiceStatus"]["applicationStatuses"]
    rs["status"]["pendingServiceStatus"] = {
        "applicationStatuses": {"llm": {"status": "DEPLOY_FAILED", "message": trace}}
    }
    s = status(rs)
    assert s["phase"] == "Degraded"
    assert cond(s, "Degraded")["message"] == "llm (new cluster): DEPLOY_FAILED: ValueError: needs FORWARD_BODY=1."
    # During an upgrade the old cluster keeps serving: Ready, and Degraded says the new one failed.
    rs = rayservice(upgrading=True)
    rs["status"]["pendingServiceStatus"] = {
        "applicationStatuses": {"llm": {"status": "DEPLOY_FAILED", "message": trace}}
    }
    s = status(rs)
    assert cond(s, "Ready")["status"] == "True" and cond(s, "Degraded")["status"] == "True"


def test_upgrade_in_progress_keeps_serving():
    s = status(rayservice(upgrading=True))
    assert s["phase"] == "Ready" and cond(s, "Progressing")["reason"] == "Upgrading"


def test_kuberay_lagging_behind_is_progressing():
    assert cond(status(rayservice(seen=False)), "Progressing")["reason"] == "Reconciling"


def test_missing_reference_blocks_but_keeps_serving():
    s = status(rayservice(), problems=["spec.ingress.apiKeysSecret: Secret default/keys not found: create it"])
    assert s["phase"] == "Degraded"
    assert cond(s, "Degraded")["reason"] == "InvalidReference" and "apiKeysSecret" in cond(s, "Degraded")["message"]
    assert cond(s, "Ready")["status"] == "True" and "left unchanged" in cond(s, "Ready")["message"]


def test_pending_and_suspended():
    assert status(None)["phase"] == "Pending"
    suspended = parse(with_spec(sample_doc("gemma-b200.yaml"), suspend=True))
    assert status(rayservice(), svc=suspended)["phase"] == "Suspended"


def test_transition_time_moves_only_on_change():
    first = status(rayservice(ready=False, app="DEPLOYING"), now="T1")
    again = status(rayservice(ready=False, app="DEPLOYING"), previous=first, now="T2")
    assert cond(again, "Ready")["lastTransitionTime"] == "T1"
    ready = status(rayservice(), previous=again, now="T3")
    assert cond(ready, "Ready")["lastTransitionTime"] == "T3"
    assert st.without_times(again) == st.without_times(first)


def test_multi_host_replicas_count_slices():
    svc = parse(sample_doc("tpu-v6e-4x4-multihost.yaml"))
    rs = rayservice()
    rs["status"]["activeServiceStatus"]["rayClusterStatus"] = {"readyWorkerReplicas": 4, "desiredWorkerReplicas": 8}
    assert st.replicas(svc, rs).model_dump() == {"ready": 1, "desired": 2}


def test_tls_endpoint_is_https():
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), ingress={"tlsSecret": "tls"}))
    assert st.endpoint(svc, SETTINGS).startswith("https://")


def test_cluster_name_before_the_first_cluster_is_active():
    rs = {"metadata": {"generation": 1}, "status": {"pendingServiceStatus": {"rayClusterName": "gemma-pend1"}}}
    assert status(rs)["children"]["rayCluster"] == "gemma-pend1"


def test_a_node_pool_replacement_is_progress_not_a_phase_change():
    message = "replacing node pool a (machine type g2-standard-8->g2-standard-24): new pool b is being created"
    obs = st.Observed(3, rayservice(), [], pool_progress=[message])
    s = st.status(GEMMA, obs, SETTINGS, {}, "2026-01-01T00:00:00Z").to_dict()
    assert s["phase"] == "Ready", "the old pool still serves"
    assert (cond(s, "Progressing")["status"], cond(s, "Progressing")["reason"]) == ("True", "UpdatingNodePools")
    assert cond(s, "Progressing")["message"] == message
