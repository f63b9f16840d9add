"""A model's vision projector (`model.mmproj`) loaded with libmtmd beside the text model, so the
worker holds it (and its measured memory counts it) from the load on. Runs in the worker process."""

from __future__ import annotations

from typing import Any


class Projector:
    def __init__(self, path: str, text_model: Any, n_threads: int, use_gpu: bool) -> None:
        from llama_cpp import mtmd_cpp

        self._mtmd = mtmd_cpp
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu  # where the model offloads, its projector goes to the GPU too
        params.print_timings = False
        if n_threads:
            params.n_threads = n_threads
        self._ctx = mtmd_cpp.mtmd_init_from_file(path.encode(), text_model, params)
        if not self._ctx:
            raise ValueError(f"libmtmd could not load the vision projector {path} for this model")
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            self.close()
            raise ValueError(f"the projector {path} has no vision encoder")

    def close(self) -> None:
        if self._ctx:
            self._mtmd.mtmd_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()


def load_projector(config: dict[str, Any], text_model: Any) -> Projector | None:
    path = config.get("mmproj")
    if not path:
        return None
    return Projector(path, text_model, int(config.get("n_threads") or 0), int(config.get("n_gpu_layers", 0)) != 0)
