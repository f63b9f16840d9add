"""The worker as an operating-system process, seen from the parent: what it is told to load, how its
exit reads in an error message, and how it is ended (`handle.py` is the handle that uses these)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from typing import Any

import psutil

from gateway.config import ModelEntry, PrefixStore

log = logging.getLogger(__name__)
_STOP_WAIT = 5.0


def worker_config(
    entry: ModelEntry, placement: dict[str, Any] | None = None, prefix_store: PrefixStore | None = None
) -> dict[str, Any]:
    """What a worker is told to load; `prefix_store`: where it keeps its prefixes across unloads."""
    return {
        "placement": placement,
        "path": str(entry.model.path),
        "mmproj": str(entry.model.mmproj) if entry.model.mmproj is not None else None,
        "image_cache": entry.model.image_cache,
        "n_ctx": entry.model.n_ctx,
        "n_batch": entry.model.n_batch,
        "n_gpu_layers": entry.model.n_gpu_layers,
        "chat_format": entry.model.chat_format,
        "chat_template": entry.model.chat_template,
        "reasoning_format": entry.model.reasoning.format,
        "use_mmap": entry.model.use_mmap,
        "flash_attn": entry.flash_attention,
        "cache_type_k": entry.model.cache_type_k,
        "cache_type_v": entry.model.cache_type_v,
        "n_threads": entry.runtime.thread_count,
        "verbose": entry.runtime.verbose,
        "repeat_last_n": entry.sampling.repeat_last_n,
        "parallel": entry.runtime.parallel,
        "embedding": entry.embedding,
        "pooling": entry.model.pooling,
        "speculative": spec.model_dump(mode="json") if (spec := entry.model.speculative) is not None else None,
        "prefix_store": None if prefix_store is None or entry.embedding else prefix_store.model_dump(mode="json"),
    }


def exit_description(process: multiprocessing.process.BaseProcess | None) -> str:
    if process is None:
        return "not started"
    process.join(timeout=0.1)  # EOF means it is exiting; the code is normally there at once
    code = process.exitcode
    if code is None:
        return "its pipe closed"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


async def end_process(process: multiprocessing.process.BaseProcess, model_id: str, saving: float = 0.0) -> None:
    """Wait for a worker told to shut down to exit (`saving`: seconds it may spend writing its prefixes
    first); one that does not is killed."""
    if not await asyncio.to_thread(_join, process, _STOP_WAIT + saving):
        log.warning("worker %s for model %s did not exit; killing it", process.pid, model_id)
        process.kill()
        await asyncio.to_thread(_join, process, _STOP_WAIT)
    if process.exitcode is not None:
        process.close()


def _join(process: multiprocessing.process.BaseProcess, timeout: float) -> bool:
    process.join(timeout)
    return process.exitcode is not None


def process_rss(pid: int) -> int | None:
    """Resident memory of a process, or None when it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
