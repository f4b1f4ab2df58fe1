"""Every label, annotation and finalizer key the operator sets or selects on, in one place.
(GKE's own node labels and taints are in catalog/labels.py.)"""

# On every child and pod (render/names.labels): who owns it, for selectors and `kubectl get -l`.
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "llmservice-operator"  # the value of MANAGED_BY: the operator watches children by it
OWNER = "llmservice.dev/name"  # the LLMService a child belongs to (KubeRay copies it to the RayCluster)
OWN_PREFIX = "llmservice.dev/"  # users may not set keys under it on pods

ENGINE_ANNOTATION = "llmservice.dev/engine"  # on Ray pod templates: the digest of what the engine loads
# On Ray pod templates: the Ray Serve LLM callbacks the Ray containers import (render/ray_hooks.py).
RAY_HOOKS_ANNOTATION = "llmservice.dev/ray-hooks"
EXPOSURE_ANNOTATIONS = "llmservice.dev/service-annotations"  # Service annotation keys set from ingress.service
FINALIZER = "llmservice.dev/node-pools"  # on services with managed node pools
# On the edge ConfigMap: the Secrets the sidecar reads, at the versions the pods should have.
EDGE_INPUTS = "llmservice.dev/edge-secrets"
# On serving pods: the edge ConfigMap version they were poked for (a pod update makes the
# kubelet refresh the pod's mounted ConfigMaps and Secrets now, not at its next periodic sync).
EDGE_REVISION = "llmservice.dev/edge-revision"

# GCE labels on managed node pools (keys allow no dots or slashes).
POOL_OWNER = "llmservice-dev-owner"
POOL_NAMESPACE = "llmservice-dev-namespace"
POOL_SLOT = "llmservice-dev-slot"  # the pool's name without its hardware digest

# KubeRay's pod labels the renderer selects on.
RAY_CLUSTER = "ray.io/cluster"
RAY_GROUP = "ray.io/group"
RAY_NODE_TYPE = "ray.io/node-type"
RAY_REPLICA = "ray.io/worker-group-replica-name"  # on multi-host pods
