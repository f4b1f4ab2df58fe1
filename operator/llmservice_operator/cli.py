"""The `llmservice` command: render, validate, crd (and, later, run and dev-cluster verbs)."""

from __future__ import annotations

import codecs
import json
import random
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from .api import InvalidLLMService, LLMService, parse
from .api.crd import crd, kopf_peering_crds
from .render import render
from .settings import settings_from_env
from .yamlio import YAMLInputError, dump, dump_all, load_all

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _error(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


class Output(StrEnum):
    yaml = "yaml"
    json = "json"


class Fail(Exception):
    """A user-facing failure: printed as one line, exit 1."""


# The API server takes at most 3 MiB in one request: a larger file cannot be one apply.
MAX_BYTES = 3 * 1024 * 1024
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _text(path: Path) -> str:
    """The file as text, or one line saying why it is not a manifest (never a traceback)."""
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with path.open("rb") as f:
                data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise Fail(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise Fail(f"{path}: larger than {MAX_BYTES // 2**20} MiB, more than the API server takes in one request")
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    if encoding == "utf-8" and b"\x00" in data:
        raise Fail(f"{path}: contains NUL bytes (UTF-16 without a byte order mark?): save it as UTF-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise Fail(
            f"{path}: not {encoding.upper().removesuffix('-SIG')} text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}): save it as UTF-8"
        ) from None
    return text


def _documents(path: Path) -> list[Any]:
    text = _text(path)
    try:
        docs = load_all(text)
    except YAMLInputError as e:
        raise Fail(f"{path}: {e}") from None
    except RecursionError:
        raise Fail(f"{path}: nested too deeply to be a manifest") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise Fail(f"{path}: not valid YAML{where}: {problem}") from None
    if not docs:
        raise Fail(f"{path}: no YAML documents found")
    return docs


def _load_documents(path: Path) -> tuple[list[tuple[dict[str, Any], LLMService]], list[str]]:
    """Each LLMService of the file, as written and as parsed; every problem found."""
    services, problems = [], []
    for i, doc in enumerate(_documents(path)):
        label = f"{path}" + (f" (document {i + 1})" if i else "")
        if isinstance(doc, dict) and doc.get("kind") not in (None, "LLMService"):
            continue  # other objects in the same file (Secrets, Namespaces) are not ours
        try:
            services.append((doc, parse(doc)))
        except InvalidLLMService as e:
            problems += [f"{label}: {fe}" for fe in e.errors]
    if not services and not problems:
        problems.append(f"{path}: no LLMService found")
    return services, problems


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")  # what `kubectl apply -f DIR` reads


def _expand(paths: list[Path]) -> list[Path]:
    """Files as `kubectl apply -f` takes them: each file, `-` for stdin, and each directory's
    .yaml, .yml and .json files (not its subdirectories), in name order."""
    out: list[Path] = []
    for path in paths:
        if str(path) != "-" and path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            if not found:
                raise Fail(f"{path}: no .yaml, .yml or .json files in this directory")
            out += found
        else:
            out.append(path)
    return out


def _services_or_exit(paths: list[Path], code: int = 1) -> list[tuple[Path, dict[str, Any], LLMService]]:
    """Every LLMService of the files, as written and as parsed; or every problem of every file
    printed and exit `code`."""
    services: list[tuple[Path, dict[str, Any], LLMService]] = []
    problems: list[str] = []
    try:
        files = _expand(paths)
    except Fail as e:
        files, problems = [], [str(e)]
    for path in files:
        try:
            found, wrong = _load_documents(path)
        except Fail as e:
            found, wrong = [], [str(e)]
        services += [(path, doc, svc) for doc, svc in found]
        problems += wrong
    for p in problems:
        _error(p)
    if problems:
        raise typer.Exit(code)
    return services


Files = Annotated[
    list[Path], typer.Argument(help="LLMService manifests: files, directories (their .yaml/.yml/.json), - for stdin.")
]


def _dump(objs: list[dict[str, Any]], output: Output) -> str:
    if output is Output.json:
        return json.dumps(objs if len(objs) != 1 else objs[0], indent=2) + "\n"
    return dump_all(objs)


_API_NAMES = {"container": "GKE", "compute": "Compute Engine"}


def _gcp_doc(api: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What the operator creates through a Google API, shown like a Kubernetes object."""
    return {
        "apiVersion": f"{api}.googleapis.com/v1",
        "kind": kind,
        "metadata": {
            "name": obj["name"],
            "annotations": {
                "llmservice.dev/note": f"created through the {_API_NAMES[api]} API by the operator, not kubectl"
            },
        },
        "spec": obj,
    }


@app.command("render")
def render_cmd(
    files: Files,
    output: Annotated[Output, typer.Option("-o", "--output")] = Output.yaml,
    kubernetes_only: Annotated[
        bool, typer.Option("--kubernetes-only", help="Leave out GKE node pools (output is kubectl-appliable).")
    ] = False,
) -> None:
    """Print what each LLMService becomes: RayService, edge config, PDB, monitoring, node pools
    (and the workload policies tpu7x slices need)."""
    services = _services_or_exit(files)
    settings = settings_from_env()
    objs: list[dict[str, Any]] = []
    for _, _, svc in services:
        out = render(svc, settings)
        objs += out.kubernetes_objects()
        if not kubernetes_only:
            objs += [_gcp_doc("compute", "ResourcePolicy", p) for p in out.workload_policies]
            objs += [_gcp_doc("container", "NodePool", p) for p in out.node_pools]
    sys.stdout.write(_dump(objs, output))


@app.command()
def validate(files: Files) -> None:
    """Check manifests offline with the same rules as the CRD; exit 1 listing every error of
    every file."""
    for path, _, svc in _services_or_exit(files):
        typer.echo(f"{path}: {svc.metadata.namespace}/{svc.metadata.name} is valid")


@app.command()
def diff(
    files: Files,
    operator: Annotated[
        str, typer.Option(help="The operator's Deployment, NAMESPACE/NAME: its settings render the children.")
    ] = "llmservice-system/llmservice-operator",
    field_manager: Annotated[
        str,
        typer.Option(help="Who applies the LLMService: kubectl (kubectl apply --server-side), argocd-controller, ..."),
    ] = "kubectl",
) -> None:
    """Show what applying FILES would change in the cluster (KUBECONFIG), object by object: the
    LLMService and everything the operator would then write (children by server-side dry run,
    deletions, patches, its status), like `kubectl diff`; and what would keep it from applying
    (a missing Secret). Exit 0: no changes, 1: changes, 2: an error (an invalid manifest, an
    API error; nothing is changed either way)."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    from .controller.kube import Kube
    from .controller.preview import operator_environ, preview

    services = _services_or_exit(files, code=2)
    try:
        kube = Kube()
        namespace, _, name = operator.rpartition("/")
        environ = operator_environ(kube, namespace or "llmservice-system", name)
        if environ is None:
            typer.echo(
                f"note: no operator Deployment {operator}: children rendered with this shell's LLMSERVICE_* settings",
                err=True,
            )
        settings = settings_from_env(environ)
        previews = [preview(kube, doc, svc, settings, field_manager) for _, doc, svc in services]
    except (ApiException, ConfigException, OSError) as e:
        _error(f"cannot diff against the cluster: {getattr(e, 'reason', None) or e}")
        raise typer.Exit(2) from None
    changes = [c for p in previews for c in p.changes]
    for p in previews:
        for problem in p.problems:
            typer.echo(f"warning: the operator would not apply the children: {problem}", err=True)
    for c in changes:
        typer.echo(f"# {c.action} {c.ref}")
        typer.echo(c.diff, nl=False)
    if changes:
        typer.echo(f"# {len(changes)} object(s) would change", err=True)
    raise typer.Exit(1 if changes else 0)


@app.command()
def run(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace (repeat); default: all.")
    ] = None,
    peering: Annotated[
        str | None,
        typer.Option(help="kopf peering object: replicas elect one active operator (crds/kopf-peering.yaml)."),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(help="Peering priority; the highest live one is active. Default: random, so replicas differ."),
    ] = None,
    health_address: Annotated[
        str, typer.Option(help="Liveness/readiness endpoint host:port (/healthz).")
    ] = "0.0.0.0:8080",
    metrics_address: Annotated[str, typer.Option(help="Prometheus metrics host:port (/metrics).")] = "0.0.0.0:9090",
    log_format: Annotated[str, typer.Option(help="json or text.")] = "json",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the operator: reconcile LLMServices into RayServices and report their status."""
    from .controller.run import run as run_operator

    if log_format not in ("json", "text"):
        _error("--log-format must be json or text")
        raise typer.Exit(2)
    run_operator(
        settings_from_env(),
        namespaces=namespace or [],
        peering=peering,
        priority=priority if priority is not None else random.randint(1, 1_000_000),
        health_address=health_address,
        metrics_address=metrics_address,
        json_logs=log_format == "json",
        verbose=verbose,
    )


@app.command("crd")
def crd_cmd(
    kopf_peering: Annotated[bool, typer.Option(help="Print the kopf peering CRDs instead.")] = False,
) -> None:
    """Print the LLMService CustomResourceDefinition generated from the API models."""
    sys.stdout.write(dump_all(kopf_peering_crds()) if kopf_peering else dump(crd()))


if __name__ == "__main__":
    app()
