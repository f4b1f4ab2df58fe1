"""Rules of what users add to the Ray pods and the Service: pod overrides, Secret env, exposure.

Same contract as rules.py: each rule once in Python and once in CEL, same field and message.
"""

from __future__ import annotations

import re

from .. import labels as keys
from ..catalog import ACCELERATORS, labels
from .rule import Rule
from .spec import LLMServiceSpec, PodOverrides

# Set by the operator (render/names.py) and by KubeRay (ray.io/*) on every Ray pod.
OWN_LABELS = (
    keys.NAME,
    keys.INSTANCE,
    keys.MANAGED_BY,
    keys.OWNER,
)
OWN_ANNOTATION_PREFIX = keys.OWN_PREFIX
# Node labels the operator derives from accelerator.* and placement (render/scheduling.py).
OWN_NODE_LABELS = tuple(
    sorted(
        {a.node_label for a in ACCELERATORS.values() if a.node_label}
        | {labels.TPU_TOPOLOGY, labels.MACHINE_TYPE, labels.ARCH, labels.SPOT, labels.FLEX_START}
        | {labels.RESERVATION_NAME}
    )
)
# Kubernetes' label syntax: [DNS-subdomain prefix/]name of at most 63; values at most 63.
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY = rf"^({_DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
KEY_MESSAGE = "must be [prefix/]name: name up to 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
VALUE_MESSAGE = "must be up to 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric (or empty)"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"  # what the API server takes as an env var name
LB_TYPE_ANNOTATION = "networking.gke.io/load-balancer-type"

_PODS = {"headPod": "head_pod", "workerPods": "worker_pods"}


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _pod(s: LLMServiceSpec, attr: str) -> PodOverrides:
    return getattr(s.ray, attr)


def _map_cel(pod: str, field: str, condition: str) -> str:
    """`condition` over the keys `k` of ray.<pod>.<field>, true when any level is absent."""
    m = f"self.ray.{pod}.{field}"
    return f"!has(self.ray.{pod}) || !has({m}) || {condition.replace('M', m)}"


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value, re.ASCII) is not None


def _pod_rules(pod: str) -> tuple[Rule, ...]:
    attr = _PODS[pod]
    toleration_ok = (
        "(t.operator != 'Exists' || !has(t.value) || t.value == '') && (has(t.key) || t.operator == 'Exists') && "
        "(!has(t.tolerationSeconds) || (has(t.effect) && t.effect == 'NoExecute'))"
    )
    return (
        Rule(
            f"ray.{pod}.labels",
            f"must not set labels the operator or KubeRay sets ({', '.join(OWN_LABELS)}, ray.io/*)",
            lambda s: any(k in OWN_LABELS or k.startswith("ray.io/") for k in _pod(s, attr).labels),
            _map_cel(pod, "labels", f"!M.exists(k, k in {_cel_list(OWN_LABELS)} || k.startsWith('ray.io/'))"),
        ),
        Rule(
            f"ray.{pod}.labels",
            f"keys {KEY_MESSAGE}; values {VALUE_MESSAGE}",
            lambda s: any(
                not _matches(LABEL_KEY, k) or not _matches(LABEL_VALUE, v) for k, v in _pod(s, attr).labels.items()
            ),
            _map_cel(pod, "labels", f"M.all(k, k.matches(r'{LABEL_KEY}') && M[k].matches(r'{LABEL_VALUE}'))"),
        ),
        Rule(
            f"ray.{pod}.annotations",
            f"must not set the operator's own annotations ({OWN_ANNOTATION_PREFIX}*) and keys must be [prefix/]name",
            lambda s: any(
                k.startswith(OWN_ANNOTATION_PREFIX) or not _matches(LABEL_KEY, k) for k in _pod(s, attr).annotations
            ),
            _map_cel(
                pod, "annotations", f"M.all(k, !k.startsWith('{OWN_ANNOTATION_PREFIX}') && k.matches(r'{LABEL_KEY}'))"
            ),
        ),
        Rule(
            f"ray.{pod}.nodeSelector",
            f"must not set node labels the operator derives from accelerator and placement "
            f"({', '.join(OWN_NODE_LABELS)}): set those fields instead",
            lambda s: any(k in OWN_NODE_LABELS for k in _pod(s, attr).node_selector),
            _map_cel(pod, "nodeSelector", f"!M.exists(k, k in {_cel_list(OWN_NODE_LABELS)})"),
        ),
        Rule(
            f"ray.{pod}.nodeSelector",
            f"keys {KEY_MESSAGE}; values {VALUE_MESSAGE}",
            lambda s: any(
                not _matches(LABEL_KEY, k) or not _matches(LABEL_VALUE, v)
                for k, v in _pod(s, attr).node_selector.items()
            ),
            _map_cel(pod, "nodeSelector", f"M.all(k, k.matches(r'{LABEL_KEY}') && M[k].matches(r'{LABEL_VALUE}'))"),
        ),
        Rule(
            f"ray.{pod}.tolerations",
            "each toleration: operator Exists takes no value, an unset key needs operator Exists, and "
            "tolerationSeconds needs effect NoExecute",
            lambda s: any(
                (t.operator == "Exists" and t.value)
                or (t.key is None and t.operator != "Exists")
                or (t.toleration_seconds is not None and t.effect != "NoExecute")
                for t in _pod(s, attr).tolerations
            ),
            _map_cel(pod, "tolerations", f"M.all(t, {toleration_ok})"),
        ),
    )


def _service(s: LLMServiceSpec) -> str:
    return s.ingress.service.type


_SVC = "self.ingress.service"
_HAS_SVC = f"has({_SVC})"

POD_RULES: tuple[Rule, ...] = (
    *_pod_rules("headPod"),
    *_pod_rules("workerPods"),
    Rule(
        "ray.env",
        "names must be environment variable names (letters, digits, '_', '-', '.', not starting with a digit)",
        lambda s: any(not _matches(ENV_NAME, k) for k in s.ray.env),
        f"!has(self.ray.env) || self.ray.env.all(k, k.matches(r'{ENV_NAME}'))",
    ),
    Rule(
        "ray.secretEnv",
        "names must be environment variable names (letters, digits, '_', '-', '.', not starting with a "
        "digit) and not also in ray.env",
        lambda s: any(not _matches(ENV_NAME, k) or k in s.ray.env for k in s.ray.secret_env),
        f"!has(self.ray.secretEnv) || self.ray.secretEnv.all(k, k.matches(r'{ENV_NAME}') && "
        "(!has(self.ray.env) || !(k in self.ray.env)))",
    ),
    Rule(
        "ray.secretEnv",
        "must not set HF_TOKEN when model.hfTokenSecret sets it: keep one",
        lambda s: s.model.hf_token_secret is not None and ("HF_TOKEN" in s.ray.secret_env or "HF_TOKEN" in s.ray.env),
        "!has(self.model.hfTokenSecret) || ((!has(self.ray.secretEnv) || !('HF_TOKEN' in self.ray.secretEnv)) && "
        "(!has(self.ray.env) || !('HF_TOKEN' in self.ray.env)))",
    ),
    Rule(
        "ingress.service.type",
        "ExternalLoadBalancer answers anyone who can reach its address: set ingress.apiKeysSecret "
        "(and the edge sidecar) first, or use InternalLoadBalancer",
        lambda s: _service(s) == "ExternalLoadBalancer" and not (s.ingress.api_keys_secret and s.ingress.sidecar),
        f"!{_HAS_SVC} || {_SVC}.type != 'ExternalLoadBalancer' || "
        "(has(self.ingress.apiKeysSecret) && self.ingress.sidecar)",
    ),
    Rule(
        "ingress.service.loadBalancerSourceRanges",
        "applies only to a load balancer: set ingress.service.type, or remove it",
        lambda s: _service(s) == "ClusterIP" and bool(s.ingress.service.load_balancer_source_ranges),
        f"!{_HAS_SVC} || {_SVC}.type != 'ClusterIP' || !has({_SVC}.loadBalancerSourceRanges) || "
        f"size({_SVC}.loadBalancerSourceRanges) == 0",
    ),
    Rule(
        "ingress.service.annotations",
        f"must not set {LB_TYPE_ANNOTATION}: ingress.service.type chooses it",
        lambda s: LB_TYPE_ANNOTATION in s.ingress.service.annotations,
        f"!{_HAS_SVC} || !has({_SVC}.annotations) || !('{LB_TYPE_ANNOTATION}' in {_SVC}.annotations)",
    ),
)
