"""The Helm chart, its values schema, the kustomize base rendered from it, the Argo CD health check."""

from __future__ import annotations

import subprocess

import lupa
import pytest
import yaml

from e2e import bins

from .conftest import ROOT

CHART = ROOT / "charts" / "llmservice-operator"
KUBE = "1.36.3"


def helm(*args: str) -> subprocess.CompletedProcess:
    exe = bins.load_versions()["helm"].bin_dir / "helm"
    return subprocess.run([str(exe), *args], capture_output=True, text=True)


def template(*sets: str, crds: bool = False) -> list[dict]:
    args = ["template", "llmsvc", str(CHART), "-n", "llmservice-system", "--kube-version", KUBE]
    args += [a for s in sets for a in ("--set", s)] + (["--include-crds"] if crds else [])
    res = helm(*args)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def kinds(objs: list[dict]) -> list[str]:
    return sorted(o["kind"] for o in objs)


VALUES_FILES = sorted((CHART / "ci").glob("*.yaml"))


@pytest.mark.parametrize("values", [None, *VALUES_FILES], ids=lambda p: p.stem if p else "defaults")
def test_lint_and_template_with_each_values_file(values):
    extra = ["-f", str(values)] if values else []
    res = helm("lint", str(CHART), "--kube-version", KUBE, *extra)
    assert res.returncode == 0, res.stdout + res.stderr
    res = helm("template", "llmsvc", str(CHART), "--kube-version", KUBE, *extra)
    assert res.returncode == 0, res.stderr
    objs = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert "Deployment" in kinds(objs)


def test_values_files_change_what_they_say():
    def render(name: str) -> list[dict]:
        res = helm("template", "llmsvc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / name))
        return [d for d in yaml.safe_load_all(res.stdout) if d]

    single = render("single-replica-values.yaml")
    assert "PodDisruptionBudget" not in kinds(single) and "NetworkPolicy" not in kinds(single)
    assert "ServiceMonitor" in kinds(single)
    assert kinds(render("namespaced-values.yaml")).count("Role") == 2


def test_default_install_is_cluster_wide_with_leader_election():
    objs = template()
    assert kinds(objs) == sorted(
        ["ClusterKopfPeering", "ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy",
         "PodDisruptionBudget", "Service", "ServiceAccount", *["ConfigMap"] * 3]  # + the 3 dashboards
    )  # fmt: skip
    [dep] = [o for o in objs if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert dep["spec"]["replicas"] == 2
    assert "--peering=llmsvc-llmservice-operator" in c["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = c["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]} and not sc["allowPrivilegeEscalation"]
    )
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]
    assert c["resources"]["limits"]["memory"]


def test_crds_come_from_the_one_source():
    crds = [o for o in template(crds=True) if o["kind"] == "CustomResourceDefinition"]
    assert {c["metadata"]["name"] for c in crds} == {
        "llmservices.llmservice.dev", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"
    }  # fmt: skip
    ours = next(c for c in crds if c["metadata"]["name"] == "llmservices.llmservice.dev")
    assert ours == yaml.safe_load((ROOT / "crds" / "llmservice.dev_llmservices.yaml").read_text())


def test_namespaced_install_has_roles_per_namespace_and_only_reads_crds_and_namespaces_cluster_wide():
    objs = template("watchNamespaces={serving,batch}")
    [cluster_role] = [o for o in objs if o["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    ]
    assert {o["metadata"]["namespace"] for o in objs if o["kind"] == "Role"} == {"serving", "batch"}
    assert {o["metadata"]["namespace"] for o in objs if o["kind"] == "KopfPeering"} == {"serving", "batch"}
    [dep] = [o for o in objs if o["kind"] == "Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=serving" in args and "--namespace=batch" in args


def test_rbac_never_lists_secrets():
    [role] = [o for o in template() if o["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        if "secrets" in rule["resources"]:
            # get by name, create (the Ray token Secret): never list, watch, update or delete
            assert set(rule["verbs"]) <= {"get", "create"}
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]


def test_rbac_covers_every_child_kind_the_operator_watches_writes_and_deletes():
    """From the child registry: a kind the operator watches needs get/list/watch, one it applies
    create/patch, one that may disappear with the spec delete (a PodMonitoring left behind after
    `observability.metrics: false`, because the role could not delete it, was a bug; so was a
    suspended service whose RayService the role could not delete, seen on the real node)."""
    from llmservice_operator.render import children as ck
    from llmservice_operator.render import slot_kinds
    from llmservice_operator.render.plan import ChildNames

    optional = {k for k, _ in slot_kinds(ChildNames.of("x"))}  # slots that may be empty (RayService: suspend)
    [role] = [o for o in template() if o["kind"] == "ClusterRole"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                granted.setdefault((group, res), set()).update(rule["verbs"])
    for kind in ck.KINDS:
        need = {"get"}
        if kind.watched:
            need |= {"list", "watch"}
        if kind.applied and kind != ck.SECRET:
            need |= {"create", "patch"}
        if kind in optional:
            need.add("delete")
        have = granted.get((kind.group, kind.plural), set())
        assert need <= have, f"{kind.kind}: the role lacks {sorted(need - have)}"


def test_gke_settings_and_workload_identity():
    objs = template(
        "gke.project=p", "gke.location=us-central1", "gke.cluster=c",
        "serviceAccount.gcpServiceAccount=llm@p.iam.gserviceaccount.com", "metrics.monitor=podMonitoring",
    )  # fmt: skip
    [sa] = [o for o in objs if o["kind"] == "ServiceAccount"]
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == "llm@p.iam.gserviceaccount.com"
    [dep] = [o for o in objs if o["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LLMSERVICE_GKE__PROJECT"] == "p" and env["LLMSERVICE_GKE__CLUSTER"] == "c"
    assert "PodMonitoring" in kinds(objs)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicas=0", "at '/replicas': minimum: got 0, want 1"),
        ("logFormat=xml", "/logFormat"),
        ("serviceAccount.gcpServiceAccount=not-an-email", "/serviceAccount/gcpServiceAccount"),
        ("settings.monitoring=datadog", "/settings/monitoring"),
        ("gke.project=p", "gke.project, gke.location and gke.cluster go together"),
        ("unknownKey=1", "additional properties 'unknownKey' not allowed"),
    ],
)
def test_bad_values_fail_at_install_with_a_clear_message(setting, message):
    res = helm("template", "x", str(CHART), "--kube-version", KUBE, "--set", setting)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


def test_kustomize_base_is_the_chart():
    """`make manifests` output is current: the kustomize base and the chart cannot drift."""
    res = helm(
        "template", "llmservice-operator", str(CHART), "--namespace", "llmservice-system",
        "--include-crds", "--kube-version", KUBE,
    )  # fmt: skip
    assert res.stdout == (ROOT / "manifests" / "kustomize" / "operator.yaml").read_text(), "run `make manifests`"


# -- Argo CD health (real Lua runtime) ------------------------------------------------------

HEALTH = (ROOT / "manifests" / "argocd" / "llmservice-health.lua").read_text()


def health(obj: dict) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    to_lua = lua.eval("function(t) return t end")

    def convert(v):
        if isinstance(v, dict):
            return lua.table_from({k: convert(x) for k, x in v.items()})
        if isinstance(v, list):
            return lua.table_from([convert(x) for x in v])
        return v

    fn = lua.eval(f"function(obj)\n{HEALTH}\nend")
    hs = fn(to_lua(convert(obj)))
    return hs["status"], hs["message"]


def llmsvc(generation=2, observed=2, conditions=(), suspend=False) -> dict:
    return {
        "metadata": {"generation": generation},
        "spec": {"suspend": suspend},
        "status": {"observedGeneration": observed, "conditions": [dict(c) for c in conditions]},
    }


READY = {"type": "Ready", "status": "True", "reason": "ServingTraffic", "message": "8 serve endpoint(s)"}
NOT_READY = {"type": "Ready", "status": "False", "reason": "Deploying", "message": "waiting for serve endpoints"}
DEGRADED = {"type": "Degraded", "status": "True", "reason": "NodePoolError", "message": "quota"}
OK = {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": ""}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (llmsvc(conditions=[READY, OK]), ("Healthy", "8 serve endpoint(s)")),
        (llmsvc(conditions=[NOT_READY, OK]), ("Progressing", "waiting for serve endpoints")),
        (llmsvc(conditions=[READY, DEGRADED]), ("Degraded", "NodePoolError: quota")),
        (
            llmsvc(observed=1, conditions=[READY, OK]),
            ("Progressing", "Waiting for the operator to observe generation 2"),
        ),
        (
            llmsvc(conditions=[READY, OK], suspend=True),
            ("Suspended", "spec.suspend is true: the RayService and its Ray cluster are deleted"),
        ),
        (
            {"metadata": {"generation": 1}, "spec": {}},
            ("Progressing", "Waiting for the operator to observe generation 1"),
        ),
        (llmsvc(conditions=[]), ("Progressing", "Waiting for serve endpoints")),
    ],
)
def test_argocd_health(obj, expected):
    assert health(obj) == expected
