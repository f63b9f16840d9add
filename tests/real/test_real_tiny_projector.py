"""libmtmd loads the projector scripts/tiny-projector writes, and refuses one of the wrong width."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real.server import SMOLLM

pytestmark = pytest.mark.real
REPO = Path(__file__).resolve().parents[2]


def _writer() -> Any:
    spec = importlib.util.spec_from_file_location("tiny_projector", REPO / "scripts" / "tiny_projector.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_projector


@pytest.fixture(scope="module")
def text_model() -> Iterator[Any]:
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = False  # llama.cpp's AMX kernels crash on some CPUs (see engine/worker/backend.py)
    model = llama_cpp.llama_model_load_from_file(str(SMOLLM).encode(), params)
    assert model
    yield model
    llama_cpp.llama_model_free(model)


def _init(projector: Path, model: Any) -> Any:
    from llama_cpp import mtmd_cpp

    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 2
    return mtmd_cpp.mtmd_init_from_file(str(projector).encode(), model, params)


def test_libmtmd_loads_the_tiny_projector(tmp_path: Path, text_model: Any) -> None:
    from llama_cpp import mtmd_cpp

    context = _init(_writer()(tmp_path / "mmproj.gguf", 576), text_model)  # SmolLM2-135M: n_embd 576
    assert context
    try:
        assert mtmd_cpp.mtmd_support_vision(context)
    finally:
        mtmd_cpp.mtmd_free(context)


def test_libmtmd_refuses_a_projector_of_another_width(tmp_path: Path, text_model: Any) -> None:
    assert not _init(_writer()(tmp_path / "narrow.gguf", 64), text_model)
