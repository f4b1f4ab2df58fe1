"""GKE node labels, taints and resource names the renderer and the e2e nodes share."""

NODEPOOL = "cloud.google.com/gke-nodepool"
GPU_ACCELERATOR = "cloud.google.com/gke-accelerator"
TPU_ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
TPU_TOPOLOGY = "cloud.google.com/gke-tpu-topology"
MACHINE_TYPE = "node.kubernetes.io/instance-type"
ZONE = "topology.kubernetes.io/zone"
TOPOLOGY_BLOCK = "cloud.google.com/gce-topology-block"
TOPOLOGY_SUBBLOCK = "cloud.google.com/gce-topology-subblock"
TOPOLOGY_HOST = "cloud.google.com/gce-topology-host"
PLACEMENT_GROUP = "cloud.google.com/gke-placement-group"
SPOT = "cloud.google.com/gke-spot"
FLEX_START = "cloud.google.com/gke-flex-start"
PROVISIONING = "cloud.google.com/gke-provisioning"
RESERVATION_NAME = "cloud.google.com/reservation-name"
# A node with a secondary boot disk from image NAME of project P, as a container image cache:
# <prefix>NAME=CONTAINER_IMAGE_CACHE.P (GKE, "Use secondary boot disks to preload data or
# container images"; the node selector Autopilot and node auto-provisioning act on).
SECONDARY_BOOT_DISK_PREFIX = "cloud.google.com.node-restriction.kubernetes.io/gke-secondary-boot-disk-"
IMAGE_CACHE_MODE = "CONTAINER_IMAGE_CACHE"
QUEUED_TAINT = "cloud.google.com/gke-queued"
ARCH = "kubernetes.io/arch"  # GKE taints Arm nodes (A4X: GB200) ARCH=arm64:NoSchedule

GPU_RESOURCE = "nvidia.com/gpu"
TPU_RESOURCE = "google.com/tpu"
GPU_TAINT_KEY = GPU_RESOURCE
TPU_TAINT_KEY = TPU_RESOURCE

# spec.placement.topologyLevel -> node label that names the domain.
TOPOLOGY_LEVELS = {
    "block": TOPOLOGY_BLOCK,
    "subblock": TOPOLOGY_SUBBLOCK,
    "host": TOPOLOGY_HOST,
}
