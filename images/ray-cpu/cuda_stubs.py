"""Make PyPI's CUDA build of torch a CPU-only torch: replace its CUDA libraries with stubs.

PyPI's Linux torch wheel is the CUDA build. libtorch_cpu.so, libtorch_python.so and
libtorch_cuda.so name libcudart, libcudnn, libnccl, cuBLAS, cuSPARSE, NVSHMEM ... as
DT_NEEDED, so the dynamic loader refuses to load torch without ~3.5 GB of nvidia-* wheels.
This script writes, for every library still named but absent, a stub: an ELF shared object
with the same SONAME, the same symbol version nodes and every symbol torch imports from it.
Functions return 100 (cudaErrorNoDevice; a failure status for every other CUDA library), so
`torch.cuda.is_available()` is False and a CPU run calls nothing else in them.

Usage: python3 cuda_stubs.py <site-packages>   (needs readelf, ldconfig and cc)
The image's Dockerfile and the offline builder both run it, so both produce the same files.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

FAILURE = 100
# torch's CUDA-only libraries that nothing loads on CPU (dlopened for CUDA linear algebra and
# runtime compilation only): deleted. libtorch_cuda.so itself stays: libtorch_python.so calls
# into it while `import torch` runs (a stub of it crashed there).
REPLACED = ("libtorch_cuda_linalg.so", "libcaffe2_nvrtc.so")
MARKER = "CUDA-STUBS.txt"  # what a previous run wrote: replaced again, never read as real
# Unversioned C entry points of NVIDIA libraries (NCCL, cuFile, ...), as opposed to the
# interpreter's Py* symbols that are also undefined in every extension library.
_NVIDIA_C_API = re.compile(r"(cu|nccl|nvrtc|nvshmem|cupti|Cupti|nvtx)")


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def _needed(lib: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _readelf("-d", str(lib)))


def _version_needs(lib: Path) -> dict[str, str]:
    """Version name -> the file that must define it (the .gnu.version_r section)."""
    needs: dict[str, str] = {}
    file = ""
    for line in _readelf("-V", str(lib)).splitlines():
        if m := re.search(r"File: (\S+)", line):
            file = m.group(1)
        elif (m := re.search(r"Name: (\S+)\s+Flags", line)) and file:
            needs[m.group(1)] = file
    return needs


def _symbols(lib: Path) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    """(undefined name[@version] -> type, defined name -> (type, size)) of the dynamic table."""
    undefined: dict[str, str] = {}
    defined: dict[str, tuple[str, int]] = {}
    for line in _readelf("--dyn-syms", str(lib)).splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].rstrip(":").isdigit():
            continue
        size, kind, ndx, name = f[2], f[3], f[6], f[7]
        if ndx == "UND":
            undefined[name] = kind
        else:
            defined[name.split("@")[0]] = (kind, int(size, 0))
    return undefined, defined


def _system_libs() -> set[str]:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+(\S+) \(", out, re.M))


Stub = dict[str, dict[str, tuple[str, int]]]  # version node -> symbol -> (type, size)


def plan(lib_dir: Path) -> dict[str, Stub]:
    """Delete torch's CUDA-only libraries; return missing SONAME -> what its stub must define."""
    marker = lib_dir / MARKER
    if marker.exists():
        for name in marker.read_text().split():
            (lib_dir / name).unlink(missing_ok=True)
    provided: dict[str, tuple[str, int]] = {}
    for name in REPLACED:
        if (lib_dir / name).exists():
            provided.update(_symbols(lib_dir / name)[1])
            (lib_dir / name).unlink()
    libs = sorted(p for p in lib_dir.iterdir() if ".so" in p.name and p.is_file())
    present = {p.name for p in libs} | _system_libs()
    defined: set[str] = set()
    for p in libs:
        defined |= _symbols(p)[1].keys()
    stubs: dict[str, Stub] = {}
    for p in libs:
        missing = [n for n in _needed(p) if n not in present]
        if not missing:
            continue
        versions = {v: f for v, f in _version_needs(p).items() if f in missing}
        for soname in missing:
            stubs.setdefault(soname, {}).setdefault(soname, {})
        for v, f in versions.items():
            stubs[f].setdefault(v, {})
        for sym, kind in _symbols(p)[0].items():
            name, _, version = sym.partition("@")
            if version in versions:
                stubs[versions[version]][version][name] = provided.get(name, (kind, 64))
            elif not version and name not in defined and (name in provided or _NVIDIA_C_API.match(name)):
                # Any library the importer names is in its lookup scope: use the first.
                stubs[missing[0]][missing[0]][name] = provided.get(name, (kind, 64))
    return stubs


def _source(stub: Stub) -> tuple[str, str]:
    """C source and linker version script of one stub."""
    lines, script = [], []
    syms = sorted({(n, k, s) for node in stub.values() for n, (k, s) in node.items()})
    for i, (name, kind, size) in enumerate(syms):
        if kind == "OBJECT":
            lines.append(f'char o{i}[{max(size, 1)}] __asm__("{name}");')
        else:
            lines.append(f'long f{i}(void) __asm__("{name}");\nlong f{i}(void) {{ return {FAILURE}; }}')
    for node, members in sorted(stub.items()):
        exported = "".join(f"    {n};\n" for n in sorted(members))
        script.append(f"{node} {{\n" + (f"  global:\n{exported}" if members else "") + "  local: *;\n};\n")
    return "\n".join(lines) + "\n", "".join(script)


def build(lib_dir: Path) -> list[Path]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for soname, stub in sorted(plan(lib_dir).items()):
            src, vers = Path(tmp) / f"{soname}.c", Path(tmp) / f"{soname}.map"
            code, script = _source(stub)
            src.write_text(code)
            vers.write_text(script)
            target = lib_dir / soname
            subprocess.run(
                ["cc", "-shared", "-fPIC", "-O2", "-s", f"-Wl,-soname,{soname}",
                 f"-Wl,--version-script={vers}", "-o", str(target), str(src)],
                check=True,
            )  # fmt: skip
            out.append(target)
    (lib_dir / MARKER).write_text("".join(f"{p.name}\n" for p in out))
    return out


def main() -> None:
    lib_dir = Path(sys.argv[1]) / "torch" / "lib"
    built = build(lib_dir)
    size = sum(p.stat().st_size for p in built) // 1024
    print(f"cuda stubs: {len(built)} libraries, {size} KiB in {lib_dir}: {' '.join(p.name for p in built)}")


if __name__ == "__main__":
    main()
