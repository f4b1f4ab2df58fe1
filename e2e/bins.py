"""Build the local control plane's binaries from Go modules into a per-version cache.

Stdlib only, so `make e2e-bins` runs before any virtualenv exists. Each component lands in
``<cache>/bin/<component>/<version>/`` and is marked complete by a stamp file written last,
so an interrupted build is redone and a warm cache rebuilds nothing.

Go settings: the default GOPROXY/GOSUMDB are used (module proxy + checksum database);
``CGO_ENABLED=0`` gives static binaries and needs no C toolchain; ``-mod=mod`` lets the
throwaway wrapper modules record checksums for what they pull in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

VERSIONS_FILE = Path(__file__).with_name("versions.toml")
STAMP = ".complete"
# Bump a component's recipe when what is built or copied for it changes (same version).
RECIPES = {"kwok": 2, "kubernetes": 2, "prometheus": 2}
# kwok's own stage definitions: nodes become Ready and heartbeat, pods go Running at once.
KWOK_STAGES = ("node/fast", "node/heartbeat", "pod/fast")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("LLMSERVICE_CACHE", Path(base) / "llmservice-operator"))


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    version: str

    @property
    def bin_dir(self) -> Path:
        return cache_root() / "bin" / self.name / self.version

    @property
    def stamp(self) -> str:
        return f"{self.module}@{self.version} recipe {RECIPES.get(self.name, 1)}\n"

    @property
    def ready(self) -> bool:
        stamp = self.bin_dir / STAMP
        return stamp.exists() and stamp.read_text() == self.stamp


def load_versions(path: Path = VERSIONS_FILE) -> dict[str, Component]:
    data = tomllib.loads(path.read_text())
    return {k: Component(k, v["module"], v["version"]) for k, v in data.items()}


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod -trimpath").strip()
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env or _go_env(), text=True, capture_output=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"e2e-bins: command failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout


def _module_dir(module: str, version: str, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], work)
    info = json.loads(out)
    if "Error" in info:
        raise SystemExit(f"e2e-bins: {info['Error']}")
    return Path(info["Dir"])


def _wrapper(work: Path, requires: dict[str, str], replaces: dict[str, str] | None = None) -> None:
    """A throwaway module that depends on the upstream module, so its own replaces are bypassed."""
    work.mkdir(parents=True, exist_ok=True)
    lines = ["module llmservice.dev/e2e/build", "", "go 1.26", ""]
    lines += [f"require {m} {v}" for m, v in sorted(requires.items())]
    lines += [f"replace {m} => {m} {v}" for m, v in sorted((replaces or {}).items())]
    (work / "go.mod").write_text("\n".join(lines) + "\n")
    (work / "go.sum").touch()


def _staging_replaces(kube_dir: Path, version: str) -> dict[str, str]:
    """k8s.io/kubernetes replaces its staging modules with local paths; pin them to v0.X.Y."""
    staging_version = "v0." + version.removeprefix("v1.")
    gomod = (kube_dir / "go.mod").read_text()
    mods = re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", gomod, flags=re.M)
    return {m: staging_version for m in mods}


def build_kubernetes(c: Component, work: Path, out: Path) -> None:
    kube_dir = _module_dir(c.module, c.version, work)
    _wrapper(work, {c.module: c.version}, _staging_replaces(kube_dir, c.version))
    major, minor = c.version.removeprefix("v").split(".")[:2]
    ldflags = " ".join(
        f"-X {pkg}.gitVersion={c.version} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    )
    # kubelet and kube-proxy run the real node; the rest is the control plane.
    cmds = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy"]
    pkgs = [f"{c.module}/cmd/{name}" for name in cmds]
    _run(["go", "build", "-ldflags", f"-s -w {ldflags}", "-o", str(out) + "/", *pkgs], work)


def _build_main(c: Component, pkg: str, work: Path, binary: Path) -> None:
    # Not `go install pkg@version`: that asks the proxy for the module's version list (for
    # deprecation notices), which the proxy refuses for some modules (KubeRay).
    _wrapper(work, {c.module: c.version})
    _run(["go", "build", "-ldflags", "-s -w", "-o", str(binary), pkg], work)


def build_etcd(c: Component, work: Path, out: Path) -> None:
    _build_main(c, c.module, work, out / "etcd")


def build_kwok(c: Component, work: Path, out: Path) -> None:
    _build_main(c, f"{c.module}/cmd/kwok", work, out / "kwok")
    src = _module_dir(c.module, c.version, work) / "kustomize" / "stage"
    stages = out / "stages"
    stages.mkdir()
    for stage in KWOK_STAGES:
        for f in sorted((src / stage).glob("*.yaml")):
            if f.name != "kustomization.yaml":
                shutil.copyfile(f, stages / f"{stage.replace('/', '-')}-{f.name}")


def build_helm(c: Component, work: Path, out: Path) -> None:
    _build_main(c, f"{c.module}/cmd/helm", work, out / "helm")


def build_coredns(c: Component, work: Path, out: Path) -> None:
    _build_main(c, c.module, work, out / "coredns")


def build_kuberay(c: Component, work: Path, out: Path) -> None:
    _build_main(c, c.module, work, out / "ray-operator")
    src = _module_dir(c.module, c.version, work) / "config" / "crd" / "bases"
    crds = out / "crds"
    crds.mkdir(exist_ok=True)
    for f in sorted(src.glob("ray.io_*.yaml")):
        shutil.copyfile(f, crds / f.name)


def build_kube_router(c: Component, work: Path, out: Path) -> None:
    _build_main(c, f"{c.module}/cmd/kube-router", work, out / "kube-router")


def build_prometheus(c: Component, work: Path, out: Path) -> None:
    # No web UI assets (they are not in the module): the HTTP API, which is all we query, works.
    _wrapper(work, {c.module: c.version})
    minor, patch = c.version.removeprefix("v0.").split(".")  # v0.316.0 is Prometheus 3.16.0
    version = f"{minor[0]}.{int(minor[1:])}.{patch}"
    ldflags = f"-s -w -X github.com/prometheus/common/version.Version={version}"
    pkgs = [f"{c.module}/cmd/prometheus", f"{c.module}/cmd/promtool"]
    # Only the Kubernetes service discovery (and the built-in file/static ones): the cloud
    # providers' SDKs are most of the build otherwise.
    tags = "remove_all_sd,enable_kubernetes_sd"
    _run(["go", "build", "-tags", tags, "-ldflags", ldflags, "-o", str(out) + "/", *pkgs], work)


def build_fake_gcs_server(c: Component, work: Path, out: Path) -> None:
    _build_main(c, c.module, work, out / "fake-gcs-server")


BUILDERS = {
    "kubernetes": build_kubernetes,
    "etcd": build_etcd,
    "kwok": build_kwok,
    "helm": build_helm,
    "kuberay": build_kuberay,
    "coredns": build_coredns,
    "prometheus": build_prometheus,
    "kube-router": build_kube_router,
    "fake-gcs-server": build_fake_gcs_server,
}


def ensure(names: list[str] | None = None) -> dict[str, float]:
    """Build every missing component; returns seconds spent per component (0 when cached)."""
    components = load_versions()
    timings: dict[str, float] = {}
    for name in names or list(components):
        c = components[name]
        start = time.monotonic()
        if not c.ready:
            out = c.bin_dir
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            work = cache_root() / "src" / f"{c.name}-{c.version}"
            BUILDERS[name](c, work, out)
            (out / STAMP).write_text(c.stamp)
        timings[name] = time.monotonic() - start
        print(f"{name:<11} {c.version:<9} {timings[name]:7.1f}s  {c.bin_dir}", flush=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("components", nargs="*", help="subset to build (default: all)")
    parser.add_argument("--print-dir", metavar="NAME", help="print a component's bin dir")
    args = parser.parse_args()
    if args.print_dir:
        print(load_versions()[args.print_dir].bin_dir)
        return
    start = time.monotonic()
    ensure(args.components or None)
    print(f"total {time.monotonic() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
