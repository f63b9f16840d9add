"""scripts/tiny-projector: a text model in, a tiny random `mlp` projector out, at its embedding width."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import gguf
import pytest

from gateway.gguf.header import read_gguf_info
from tests.ggufgen import write_tiny_gguf

REPO = Path(__file__).resolve().parents[2]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tiny_projector", REPO / "scripts" / "tiny_projector.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_projector = load_script()


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: [int(d) for d in t.shape] for t in reader.tensors}  # llama.cpp's dimension order


def test_the_command_matches_the_models_embedding_width(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "text.gguf", embedding=96)
    out = tmp_path / "mmproj.gguf"
    done = subprocess.run(
        [str(REPO / "scripts" / "tiny-projector"), str(model), str(out)],
        capture_output=True,
        text=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert "width 96, 16 tokens per image" in done.stdout
    info = read_gguf_info(out)
    assert info.architecture == "clip"
    assert info.metadata["clip.has_vision_encoder"] is True
    assert info.metadata["clip.projector_type"] == "mlp"
    assert info.metadata["clip.vision.projection_dim"] == 96
    shapes = _tensor_shapes(out)
    assert shapes["mm.0.weight"] == [64, 96] and shapes["mm.2.weight"] == [96, 96]
    assert shapes["v.patch_embd.weight"] == [8, 8, 3, 64]
    assert shapes["v.position_embd.weight"] == [64, 16]


def test_integer_keys_are_uint32_and_every_block_is_whole(tmp_path: Path) -> None:
    out = tiny_projector.write_tiny_projector(tmp_path / "p.gguf", 40, image_size=16, patch_size=8)
    reader = gguf.GGUFReader(str(out))
    for name, field in reader.fields.items():
        if name.startswith("clip.vision.") and field.types[0] not in (
            gguf.GGUFValueType.FLOAT32,
            gguf.GGUFValueType.ARRAY,
        ):
            assert field.types == [gguf.GGUFValueType.UINT32], name  # clip.cpp aborts on any other type
    shapes = _tensor_shapes(out)
    assert shapes["v.position_embd.weight"] == [64, 4]  # (16 / 8)^2 image tokens
    for block in range(tiny_projector.BLOCKS):
        # ffn_down's first dimension must not be the hidden width, or clip.cpp swaps it with ffn_up
        assert shapes[f"v.blk.{block}.ffn_down.weight"] == [128, 64]
        assert shapes[f"v.blk.{block}.ffn_up.weight"] == [64, 128]
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            assert shapes[f"v.blk.{block}.{name}.weight"] == [64, 64]


def test_a_patch_size_that_does_not_divide_the_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        tiny_projector.write_tiny_projector(tmp_path / "p.gguf", 64, image_size=30, patch_size=8)
