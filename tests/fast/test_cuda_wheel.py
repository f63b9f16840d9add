"""scripts/build-cuda-wheel's plan and packaging, checked without building (the build itself takes
35-40 minutes of two cores and runs in the background, never in a test)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cuda_wheel", REPO / "scripts" / "cuda_wheel.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_wheel = load_script()


def test_the_plan_builds_for_hopper_without_native_cpu_flags_or_libcuda(tmp_path: Path) -> None:
    plan = cuda_wheel.plan("90", "0.3.36", tmp_path)
    args = plan["env"]["CMAKE_ARGS"].split()
    toolkit = tmp_path / "toolkit"
    for wanted in (
        "-DGGML_CUDA=ON",
        "-DGGML_NATIVE=OFF",
        "-DCMAKE_CUDA_ARCHITECTURES=90-real",
        "-DGGML_CUDA_NO_VMM=ON",
        f"-DCUDAToolkit_ROOT={toolkit}",
        f"-DCMAKE_CUDA_COMPILER={toolkit}/bin/nvcc",
    ):
        assert wanted in args
    assert plan["env"]["CMAKE_GENERATOR"] == "Ninja"
    assert plan["env"]["CMAKE_BUILD_PARALLEL_LEVEL"] == "2"
    steps = plan["steps"]
    assert steps[0] == ["cp", "-a", "/usr/local/cuda-13.0", str(toolkit)]
    assert "nvidia-cublas==13.1.0.3" in steps[1] and "--no-deps" in steps[1]  # cuBLAS from its wheel
    assert steps[2][0] == "link-cublas"
    assert "llama-cpp-python==0.3.36" in steps[3] and "--no-binary" in steps[3]  # from the sdist
    assert steps[4][0] == "package"
    assert plan["carry_limit"] == 64 * 2**20
    assert "nvidia-cublas==13.1.0.3" in plan["runtime"]["beside"]


def test_the_architecture_is_chosen_and_defaults_to_90(tmp_path: Path) -> None:
    assert cuda_wheel.DEFAULT_ARCH == "90"
    assert "-DCMAKE_CUDA_ARCHITECTURES=89-real" in cuda_wheel.plan("89", "1.0", tmp_path)["env"]["CMAKE_ARGS"]


def fake_wheel(directory: Path, size: int) -> Path:
    """A wheel like llama-cpp-python's: each library three times (.so, .so.0, .so.0.x.y)."""
    directory.mkdir()
    wheel = directory / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    library = os.urandom(size)  # incompressible, as compiled kernels nearly are
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llama_cpp/__init__.py", "__version__ = '0.3.36'\n")
        for name in ("libggml-cuda.so", "libggml-cuda.so.0", "libggml-cuda.so.0.9.4"):
            archive.writestr(f"llama_cpp/lib/{name}", library)
    return wheel


def test_the_package_keeps_each_library_once_under_one_carry(tmp_path: Path) -> None:
    fake_wheel(tmp_path / "wheel", 300_000)
    result = cuda_wheel.package(tmp_path / "wheel", tmp_path / "out")
    assert result["parts"] == [result["tarball"]]
    tarball = tmp_path / "out" / result["tarball"]
    assert tarball.stat().st_size < 2 * 300_000  # once, not three times
    with tarfile.open(tarball) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert members["llama_cpp/lib/libggml-cuda.so"].issym()
    assert members["llama_cpp/lib/libggml-cuda.so"].linkname == "libggml-cuda.so.0.9.4"
    assert members["llama_cpp/lib/libggml-cuda.so.0.9.4"].isfile()
    assert "MANIFEST" in members
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert (tmp_path / "out" / "SHA256SUMS").read_text() == f"{digest}  {tarball.name}\n"


def test_a_package_over_the_limit_is_split_with_a_checksum(tmp_path: Path) -> None:
    fake_wheel(tmp_path / "wheel", 300_000)
    result = cuda_wheel.package(tmp_path / "wheel", tmp_path / "out", limit=100_000, part_size=100_000)
    parts = [tmp_path / "out" / name for name in result["parts"]]
    assert len(parts) == 4 and all(p.stat().st_size <= 100_000 for p in parts)
    joined = b"".join(p.read_bytes() for p in parts)
    assert hashlib.sha256(joined).hexdigest() == result["sha256"]
    assert (tmp_path / "out" / "SHA256SUMS").read_text().split()[0] == result["sha256"]


def test_cublas_joins_the_toolkit_copy(tmp_path: Path) -> None:
    wheel = tmp_path / "cublas" / "nvidia" / "cu13"
    (wheel / "include").mkdir(parents=True)
    (wheel / "lib").mkdir()
    (wheel / "include" / "cublas_v2.h").write_text("")
    (wheel / "lib" / "libcublas.so.13").write_bytes(b"x")
    (wheel / "lib" / "libcublasLt.so.13").write_bytes(b"y")
    toolkit = tmp_path / "toolkit"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "lib64").mkdir()
    cuda_wheel.link_cublas(tmp_path / "cublas", toolkit)
    assert (toolkit / "include" / "cublas_v2.h").exists()
    assert (toolkit / "lib64" / "libcublas.so").resolve() == (wheel / "lib" / "libcublas.so.13").resolve()
    assert (toolkit / "lib64" / "libcublasLt.so").exists()


def test_the_shell_script_prints_the_plan(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-cuda-wheel"), "--arch", "100", "--work", str(tmp_path), "--plan"],
        env={**os.environ, "CUDA_WHEEL_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout)
    assert plan["arch"] == "100" and plan["work"] == str(tmp_path)
    assert not list(tmp_path.iterdir())  # a plan builds nothing
