"""Plans and runs a CUDA build of the pinned llama-cpp-python on this machine, ahead of a lent GPU
(run through `scripts/build-cuda-wheel`; facts in docs/gpu-memory.md, "Building the CUDA wheel").

From registry packages only: nvcc, the CUDA runtime and headers are the toolkit folder assembled
from pip wheels (/usr/local/cuda-13.0 here); cuBLAS, which ggml-cuda links, comes from the PyPI
wheel `nvidia-cublas` and is copied into a private copy of that folder. No wheel ships a link stub
for the driver (libcuda), so the build turns off ggml-cuda's virtual memory management
(GGML_CUDA_NO_VMM), its only user of the driver API at link time. GGML_NATIVE=OFF: the build
machine's CPU is not the GPU machine's. The result is a tarball of the `llama_cpp` package with
each library once (the wheel's duplicate copies become symlinks), stripped, under one carry
(64 MiB) or split into parts with a checksum; cuBLAS stays outside it (over 600 MB): the lent
machines have it beside torch, named in the tarball's MANIFEST as the pip wheel it comes from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLKIT = Path("/usr/local/cuda-13.0")
CUBLAS = "nvidia-cublas==13.1.0.3"  # cuBLAS 13 headers and libraries (the -cu13 names are empty)
CARRY_LIMIT = 64 * 2**20
PART_SIZE = 60 * 2**20
DEFAULT_ARCH = "90"  # H100 / H200


def pinned_version() -> str:
    """The llama-cpp-python the shared venv runs (the CUDA build must be the same source)."""
    python = REPO / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True, text=True
    )
    return done.stdout.strip() or "0.3.36"


def cmake_args(arch: str, toolkit: Path) -> list[str]:
    return [
        "-DGGML_CUDA=ON",
        "-DGGML_NATIVE=OFF",  # no -march=native: the GPU machine's CPU is not this one's
        f"-DCMAKE_CUDA_ARCHITECTURES={arch}-real",  # one architecture: ~32 MB of kernels, not ~200
        f"-DCUDAToolkit_ROOT={toolkit}",
        f"-DCMAKE_CUDA_COMPILER={toolkit}/bin/nvcc",
        "-DGGML_CUDA_NO_VMM=ON",  # no libcuda at link time (no wheel ships its stub)
        "-DCMAKE_CUDA_RUNTIME_LIBRARY=Shared",  # libcudart once, from the runtime wheel
        "-DBUILD_SHARED_LIBS=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_TOOLS=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_CURL=OFF",
    ]


def plan(arch: str, version: str, work: Path, toolkit: Path = TOOLKIT) -> dict[str, object]:
    """Every step, as commands and environment, without running any."""
    copy = work / "toolkit"
    cublas = work / "cublas"
    pip = [str(REPO / ".venv" / "bin" / "python"), "-m", "pip"]
    env = {
        "CMAKE_ARGS": " ".join(cmake_args(arch, copy)),
        "CMAKE_GENERATOR": "Ninja",
        "CMAKE_BUILD_PARALLEL_LEVEL": "2",  # two cores, shared: the build runs niced in the background
        "CUDACXX": f"{copy}/bin/nvcc",
        "FORCE_CMAKE": "1",
    }
    return {
        "arch": arch,
        "version": version,
        "work": str(work),
        "toolkit": str(toolkit),
        "steps": [
            ["cp", "-a", str(toolkit), str(copy)],
            [*pip, "install", "--no-deps", "--target", str(cublas), CUBLAS],
            ["link-cublas", str(cublas), str(copy)],  # headers and libraries into the copy, with .so links
            [
                *pip,
                "wheel",
                "--no-deps",
                "--no-binary",
                "llama-cpp-python",
                f"llama-cpp-python=={version}",
                "-w",
                str(work / "wheel"),
            ],
            ["package", str(work / "wheel"), str(work / "out")],
        ],
        "env": env,
        "carry_limit": CARRY_LIMIT,
        "runtime": {
            "inside": ["libllama, libggml*, libggml-cuda (stripped, each once)"],
            "beside": [CUBLAS, "nvidia-cuda-runtime (libcudart.so.13)"],
            "ld_library_path": "site-packages/nvidia/cu13/lib of a venv with those wheels (the lent "
            "machines: /opt/torch/.venv, beside torch)",
        },
        "seconds": "35-40 minutes at -j2 (ggml-cuda ~28 of them)",
    }


def link_cublas(cublas: Path, toolkit: Path) -> None:
    """cuBLAS's headers and libraries into the toolkit copy, with the unversioned names CMake links."""
    root = next((p for p in cublas.rglob("cublas_v2.h")), None)
    if root is None:
        raise SystemExit(f"no cublas_v2.h under {cublas}")
    base = root.parent.parent  # .../nvidia/cu13 (include/, lib/)
    for header in (base / "include").iterdir():
        target = toolkit / "include" / header.name
        if not target.exists():
            target.symlink_to(header)
    lib = toolkit / "lib64" if (toolkit / "lib64").exists() else toolkit / "lib"
    for library in (base / "lib").glob("libcublas*.so*"):
        target = lib / library.name
        if not target.exists():
            target.symlink_to(library)
        unversioned = lib / (library.name.split(".so")[0] + ".so")
        if not unversioned.exists():
            unversioned.symlink_to(library)


def dedupe(tree: Path) -> int:
    """Identical libraries (a wheel keeps .so, .so.0 and .so.0.x.y as copies) become symlinks to the
    longest-named one; returns the bytes saved."""
    by_digest: dict[str, list[Path]] = {}
    for path in sorted(tree.rglob("*.so*")):
        if path.is_file() and not path.is_symlink():
            by_digest.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
    saved = 0
    for paths in by_digest.values():
        keep = max(paths, key=lambda p: (len(p.name), p.name))
        for path in paths:
            if path != keep and path.parent == keep.parent:
                saved += path.stat().st_size
                path.unlink()
                path.symlink_to(keep.name)
    return saved


def package(wheel_dir: Path, out: Path, limit: int = CARRY_LIMIT, part_size: int = PART_SIZE) -> dict[str, object]:
    """The built wheel's llama_cpp package as one tarball (symlinks kept, libraries stripped), split
    into parts with a SHA-256 when over `limit`."""
    import zipfile

    out.mkdir(parents=True, exist_ok=True)
    wheel = next(wheel_dir.glob("llama_cpp_python-*.whl"))
    tree = out / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tree)
    if shutil.which("strip"):
        for library in tree.rglob("*.so*"):
            if library.is_file() and not library.is_symlink():
                subprocess.run(["strip", "--strip-unneeded", str(library)], check=False)
    saved = dedupe(tree)
    (tree / "MANIFEST").write_text(
        f"built from {wheel.name}\nneeds beside it: {CUBLAS}, nvidia-cuda-runtime (libcudart.so.13)\n"
        "install: tar -xzf into a venv's site-packages (over the CPU llama_cpp), "
        "LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib\n"
    )
    tarball = out / (wheel.stem + ".tar.gz")
    with tarfile.open(tarball, "w:gz") as archive:
        for path in sorted(tree.iterdir()):
            archive.add(path, arcname=path.name)
    shutil.rmtree(tree)
    size = tarball.stat().st_size
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    parts = [tarball]
    if size > limit:
        parts = []
        data = tarball.read_bytes()
        for index, start in enumerate(range(0, size, part_size)):
            part = out / f"{tarball.name}.part{index:02d}"
            part.write_bytes(data[start : start + part_size])
            parts.append(part)
        tarball.unlink()
    (out / "SHA256SUMS").write_text(f"{digest}  {tarball.name}\n")
    return {"tarball": tarball.name, "bytes": size, "sha256": digest, "parts": [p.name for p in parts], "saved": saved}


def run(plan_: dict[str, object]) -> None:
    """Every step of the plan, in this process (the shell script puts it in the background)."""
    env = {**os.environ, **plan_["env"]}  # type: ignore[dict-item]
    for step in plan_["steps"]:  # type: ignore[attr-defined]
        print("+", " ".join(step), flush=True)
        if step[0] == "link-cublas":
            link_cublas(Path(step[1]), Path(step[2]))
        elif step[0] == "package":
            print(json.dumps(package(Path(step[1]), Path(step[2])), indent=2), flush=True)
        elif step[0] == "cp" and Path(step[-1]).exists():
            continue  # the copy of a former run
        else:
            subprocess.run(step, check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=DEFAULT_ARCH, help="CUDA architecture (90: H100/H200)")
    parser.add_argument("--version", default=None, help="llama-cpp-python version (default: the venv's)")
    parser.add_argument("--work", type=Path, default=REPO / ".cuda-wheel")
    parser.add_argument("--plan", action="store_true", help="print the plan as JSON; build nothing")
    args = parser.parse_args(argv)
    steps = plan(args.arch, args.version or pinned_version(), args.work.resolve())
    if args.plan:
        print(json.dumps(steps, indent=2))
        return 0
    if not TOOLKIT.joinpath("bin", "nvcc").exists():
        print(f"build-cuda-wheel: no nvcc under {TOOLKIT}", file=sys.stderr)
        return 2
    run(steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
