"""One plan per service: every sizing and naming decision made once, then passed to every
builder (RayService, edge sidecar, PDB, monitoring, NetworkPolicy, node pools, status).

The plan holds the accelerator, the worker groups with their bounds at every level (Serve
replicas, Ray worker pods, GKE nodes), the parsed model source and the name of every child.
Builders read these instead of recomputing them, so two builders cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from ..api.resource import LLMService
from ..api.spec import LLMServiceSpec
from ..catalog import Accelerator, get
from . import names
from .shape import Shape, WorkerBounds, worker_bounds

MODELS_MOUNT = "/mnt/models"  # pvc:// sources are mounted here

Scheme = Literal["hf", "gs", "s3", "pvc"]


@dataclass(frozen=True)
class ModelSource:
    """`spec.model.source`, parsed once."""

    uri: str
    scheme: Scheme
    claim: str | None = None  # pvc: the PersistentVolumeClaim
    path: str = ""  # pvc: the path inside the claim; gs/s3: bucket/prefix; hf: the repo id

    @property
    def serve_source(self) -> str | dict[str, str]:
        """Ray Serve LLM's `model_source`."""
        if self.scheme in ("gs", "s3"):
            return {"bucket_uri": self.uri}
        if self.scheme == "pvc":
            return f"{MODELS_MOUNT}/{self.path}".rstrip("/")
        return self.uri


def parse_source(uri: str) -> ModelSource:
    """The schema's SOURCE_PATTERN has checked the form."""
    for scheme in ("gs", "s3"):
        if uri.startswith(f"{scheme}://"):
            return ModelSource(uri, "gs" if scheme == "gs" else "s3", path=uri.removeprefix(f"{scheme}://"))
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        return ModelSource(uri, "pvc", claim=claim, path=path)
    return ModelSource(uri, "hf", path=uri)


@dataclass(frozen=True)
class ChildNames:
    """Every object the operator writes for a service, by name."""

    ray_service: str  # also the RayService's serve Service: the endpoint's host name
    edge_config: str
    edge_peers: str
    network_policy: str
    pdb: str
    monitoring: str
    ray_auth: str

    @classmethod
    def of(cls, service: str) -> ChildNames:
        return cls(
            ray_service=service,
            edge_config=names.child(service, "edge"),
            edge_peers=names.child(service, "edge-peers"),
            network_policy=names.child(service, "ray"),
            pdb=names.child(service, "workers"),
            monitoring=service,
            ray_auth=names.ray_auth_secret(service),
        )

    @property
    def serve_service(self) -> str:
        return self.ray_service


@dataclass(frozen=True)
class Plan:
    svc: LLMService
    accelerator: Accelerator
    groups: tuple[WorkerBounds, ...]  # one Ray worker group per Serve role
    source: ModelSource
    names: ChildNames

    @property
    def spec(self) -> LLMServiceSpec:
        return self.svc.spec

    @property
    def name(self) -> str:
        return self.svc.metadata.name

    @property
    def namespace(self) -> str:
        return self.svc.metadata.namespace

    @property
    def shape(self) -> Shape:
        """The model replica's shape (the first group's: prefill and decode share hardware)."""
        return self.groups[0].shape

    @cached_property
    def head_serves(self) -> bool:
        """The head runs no replica; it is in the Service only for scale-from-zero, where its
        fallback proxy holds requests while the first replica starts."""
        return any(g.replicas.min == 0 for g in self.groups)

    @property
    def min_worker_pods(self) -> int:
        return sum(g.min_pods for g in self.groups)

    @property
    def pods_per_replica(self) -> int:
        """Worker pods per model replica, for counting replicas from pods (1 with several roles)."""
        return self.groups[0].shape.pods_per_replica if len(self.groups) == 1 else 1


def plan(svc: LLMService) -> Plan:
    return Plan(
        svc=svc,
        accelerator=get(svc.spec.accelerator.type),
        groups=tuple(worker_bounds(svc.spec)),
        source=parse_source(svc.spec.model.source),
        names=ChildNames.of(svc.metadata.name),
    )
