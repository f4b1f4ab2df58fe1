"""How one model replica maps onto pods and nodes, and the replica bounds at every level.

The three autoscalers are kept consistent from one source, spec.replicas: Serve replicas
[min, max] -> Ray worker pods [min x pods, max x pods] -> GKE nodes [min x nodes, max x nodes].
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.quantity import GIB, cpu_cores, memory_bytes, ray_cpus
from ..api.spec import DEFAULT_CPU_WORKER, LLMServiceSpec, ReplicaSpec, Resources
from ..catalog import Accelerator, Machine, TpuSlice, cpu_machine_for, get, tpu_slice

# A GPU/TPU worker pod asks for its share of the node's vCPUs and memory less a fifth, which
# is kept for GKE system pods and the edge sidecar.
NODE_SHARE = 0.8


@dataclass(frozen=True)
class Shape:
    accelerator: Accelerator
    per_replica: int  # GPUs or TPU chips one Serve replica uses (1 for CPU: one pod)
    per_pod: int  # accelerators each Ray worker pod requests (1 for CPU)
    pods_per_replica: int
    machine_type: str
    node: Machine | None  # catalog machine the pod's requests are sized from; None: unknown CPU machine
    tpu: TpuSlice | None = None
    worker: Resources | None = None  # spec.ray.workerResources (CPU: always set, defaulted)

    @property
    def num_of_hosts(self) -> int:
        """KubeRay numOfHosts: multi-host TPU slices are created and deleted as a unit."""
        return self.pods_per_replica if self.tpu else 1

    @property
    def ray_cpus(self) -> int | None:
        """CPU: the Ray CPUs of a worker pod (rayStartParams num-cpus), all for its one replica."""
        return ray_cpus(self.worker.cpu) if self.accelerator.is_cpu and self.worker else None

    @property
    def pods_per_node(self) -> int:
        if self.node is None:
            return 1
        if self.accelerator.is_cpu:
            assert self.worker
            cpu, mem = cpu_cores(self.worker.cpu), memory_bytes(self.worker.memory) / GIB
            return max(1, self.node.holds(cpu, mem))
        return max(1, self.node.accelerators // self.per_pod)

    def pod_requests(self) -> tuple[str, str]:
        """CPU and memory for one worker pod: spec.ray.workerResources when set, else its share
        of the node less a fifth kept for GKE system pods and the edge sidecar."""
        if self.worker:
            return self.worker.cpu, self.worker.memory
        assert self.node
        share = self.per_pod / self.node.accelerators
        cpu = max(1, int(self.node.vcpus * share * NODE_SHARE))
        mem = max(1, int(self.node.memory_gib * share * NODE_SHARE))
        return str(cpu), f"{mem}Gi"

    def nodes(self, replicas: int) -> int:
        """Nodes needed for `replicas` model replicas (small replicas share a node)."""
        pods = replicas * self.pods_per_replica
        return -(-pods // self.pods_per_node)


def _cpu_shape(spec: LLMServiceSpec, acc: Accelerator) -> Shape:
    """One replica = one worker pod of spec.ray.workerResources; the node is the machineType
    when the catalog knows it, else the smallest catalog machine holding the pod."""
    worker = spec.ray.worker_resources or DEFAULT_CPU_WORKER
    node: Machine | None
    if spec.accelerator.machine_type:
        machine = spec.accelerator.machine_type
        node = next((m for m in acc.machines if m.name == machine), None)
    else:
        node = cpu_machine_for(cpu_cores(worker.cpu), memory_bytes(worker.memory) / GIB)
        node = node or max(acc.machines, key=lambda m: (m.vcpus, m.memory_gib))  # rejected by the rules
        machine = node.name
    return Shape(acc, 1, 1, 1, machine, node, worker=worker)


def shape(spec: LLMServiceSpec, tensor_parallel_size: int | None = None) -> Shape:
    acc = get(spec.accelerator.type)
    if acc.is_cpu:
        return _cpu_shape(spec, acc)
    worker = spec.ray.worker_resources
    if acc.is_tpu:
        assert spec.accelerator.topology, "validated: TPU needs topology"
        s = tpu_slice(acc, spec.accelerator.topology)
        node = acc.machine(s.chips_per_host)
        assert node
        return Shape(acc, s.chips, s.chips_per_host, s.hosts, s.machine_type, node, s, worker)
    tp = tensor_parallel_size or spec.engine.tensor_parallel_size
    per_replica = tp * spec.engine.pipeline_parallel_size
    node = acc.machine(acc.node_size_for(per_replica))
    assert node, f"catalog: {acc.key} has no machine for {per_replica} GPUs"
    per_pod = min(per_replica, node.accelerators)
    machine = spec.accelerator.machine_type or node.name
    return Shape(acc, per_replica, per_pod, -(-per_replica // node.accelerators), machine, node, worker=worker)


def serve_bounds(spec: LLMServiceSpec) -> list[tuple[str, ReplicaSpec, int | None]]:
    """(role, Serve replicas Ray runs, tensor parallel override) per Serve deployment. With
    data parallelism Ray runs one replica per DP rank (the serve config says DP groups)."""
    if spec.prefill_decode:
        pd = spec.prefill_decode
        return [
            ("prefill", pd.prefill.replicas, pd.prefill.tensor_parallel_size),
            ("decode", pd.decode.replicas, pd.decode.tensor_parallel_size),
        ]
    if spec.engine.data_parallel_size > 1:
        # Each DP rank is one Serve replica; a DP group is deployed whole.
        dp = spec.engine.data_parallel_size
        r = spec.replicas
        return [("dp", ReplicaSpec(min=r.min * dp, max=r.max * dp), None)]
    return [("llm", spec.replicas, None)]


@dataclass(frozen=True)
class WorkerBounds:
    role: str
    shape: Shape
    replicas: ReplicaSpec  # Serve replicas of this role
    tensor_parallel_size: int | None = None  # this role's, where it differs from the engine's

    @property
    def min_pods(self) -> int:
        return self.replicas.min * self.shape.pods_per_replica

    @property
    def max_pods(self) -> int:
        return self.replicas.max * self.shape.pods_per_replica

    @property
    def min_nodes(self) -> int:
        return self.shape.nodes(self.replicas.min)

    @property
    def max_nodes(self) -> int:
        return self.shape.nodes(self.replicas.max)

    @property
    def min_groups(self) -> int:
        """KubeRay `minReplicas`: counts multi-host units (a TPU slice is one)."""
        return self.min_pods // self.shape.num_of_hosts

    @property
    def max_groups(self) -> int:
        return self.max_pods // self.shape.num_of_hosts


def worker_bounds(spec: LLMServiceSpec) -> list[WorkerBounds]:
    """One Ray worker group per Serve role (prefill and decode may differ in size)."""
    return [WorkerBounds(role, shape(spec, tp), r, tp) for role, r, tp in serve_bounds(spec)]
