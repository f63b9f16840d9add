"""What a model needs in each memory pool for a given placement, estimated from its GGUF header.

llama.cpp puts layer `il` on a GPU when `il >= n_layer + 1 - n_gpu_layers`; the output head counts
as layer `n_layer`, and the input embedding always stays on the CPU. Across several GPUs the
offloaded layers are split by cumulative share (`tensor_split`), the head going with the last
layer. Each GPU then holds its layers' weights and KV cache, a compute buffer, and the CUDA context
of the worker. Everything is rounded up: an estimate that is too low costs an OOM, one that is a
little high costs nothing until memory is tight, and the measured figures replace it after load.
The host part of a CPU-only model is exactly `memory.estimate` (fitted to measured RSS).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.gguf.info import GGUFInfo
from gateway.memory.estimate import F16_CACHE, F32, CacheTypes, estimate, kv_bytes_per_layer
from gateway.memory.planner import Placement
from gateway.memory.pools import HOST, Vector

# A worker's CUDA context on each GPU it uses (driver state, cuBLAS workspaces, loaded kernels);
# llama.cpp's buffer lines do not include it. 300-500 MiB on recent GPUs: rounded up.
GPU_CONTEXT_BYTES = 512 * 2**20
# Host memory a worker that uses a GPU holds beyond a CPU-only one (the GPU runtime's libraries).
GPU_RUNTIME_HOST_BYTES = 256 * 2**20
COMPUTE_EXTRA_BYTES = 2 * 2**20
# The attention scores buffer of the plain attention path, plus the allocator's rounding. Counted even
# where flash attention (llama.cpp's "auto") will need far less: a device may not support it.
KQ_MARGIN = 1.15


def layer_devices(n_layer: int, n_gpu_layers: int, shares: tuple[float, ...]) -> list[int | None]:
    """For layers 0..n_layer (n_layer is the output head): the index of the device holding it, or
    None for the CPU. Mirrors llama.cpp's assignment."""
    if not shares or n_gpu_layers == 0:
        return [None] * (n_layer + 1)
    offloaded = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    first = n_layer + 1 - offloaded
    total = sum(shares)
    cumulative, running = [], 0.0
    for share in shares:
        running += share
        cumulative.append(running / total)
    result: list[int | None] = []
    for il in range(n_layer + 1):
        if il < first:
            result.append(None)
        else:
            index = bisect.bisect_right(cumulative, (il - first) / offloaded)
            result.append(min(index, len(shares) - 1))
    return result


@dataclass(frozen=True)
class Footprint:
    vector: Vector
    weights: Vector
    kv_cache: Vector
    compute: Vector
    overhead: Vector


def _compute_bytes(info: GGUFInfo, n_ctx: int, n_ubatch: int, has_layers: bool, has_head: bool) -> int:
    kq = int(n_ubatch * n_ctx * info.head_count * F32 * KQ_MARGIN) if has_layers else 0
    logits = n_ubatch * info.vocab_size * F32 if has_head else 0
    extra = n_ubatch * (4 * info.embedding_length + 2 * info.feed_forward_length) * F32 + COMPUTE_EXTRA_BYTES
    return max(kq, logits) + extra


def footprint(
    info: GGUFInfo,
    n_ctx: int,
    placement: Placement,
    n_ubatch: int = 512,
    output_rows: int = 0,
    batch: int = 0,
    cache: CacheTypes = F16_CACHE,
) -> Footprint:
    """Bytes per pool the model needs placed like this, with `n_ctx` KV cells (`output_rows`, `batch`,
    `cache`: see memory.estimate; llama.cpp keeps outputs in host memory)."""
    host_only = estimate(info, n_ctx, output_rows=output_rows, batch=batch, cache=cache)
    if not placement.on_gpu:
        return Footprint(
            vector=Vector.of({HOST: host_only.total}),
            weights=Vector.of({HOST: host_only.weights}),
            kv_cache=Vector.of({HOST: host_only.kv_cache}),
            compute=Vector(),
            overhead=Vector.of({HOST: host_only.overhead}),
        )
    n_layer = info.block_count
    shares = placement.split or tuple(1.0 for _ in placement.devices)
    where = layer_devices(n_layer, placement.n_gpu_layers, shares)
    kv_layers = kv_bytes_per_layer(info, cache)
    weights: dict[str, int] = {HOST: info.input_bytes}
    kv: dict[str, int] = {}
    for il in range(n_layer):
        pool = HOST if where[il] is None else placement.devices[where[il] or 0]
        weights[pool] = weights.get(pool, 0) + (info.layer_bytes[il] if il < len(info.layer_bytes) else 0)
        kv[pool] = kv.get(pool, 0) + n_ctx * (kv_layers[il] if il < len(kv_layers) else 0)
    head_index = where[n_layer]
    head_pool = HOST if head_index is None else placement.devices[head_index]
    # A head tied to the input embedding is copied to the GPU that runs it.
    head_bytes = info.output_bytes + (0 if info.has_output_tensor or head_pool == HOST else info.input_bytes)
    weights[head_pool] = weights.get(head_pool, 0) + head_bytes
    compute: dict[str, int] = {}
    overhead: dict[str, int] = {HOST: host_only.overhead + GPU_RUNTIME_HOST_BYTES}
    for index, device in enumerate(placement.devices):
        has_layers = index in where[:n_layer]
        has_head = head_index == index
        if not (has_layers or has_head):
            continue
        compute[device] = _compute_bytes(info, n_ctx, n_ubatch, has_layers, has_head)
        overhead[device] = GPU_CONTEXT_BYTES
    # The host keeps the CPU layers' scratch (and the logits when the head stays on the CPU).
    compute[HOST] = (
        _compute_bytes(info, n_ctx, n_ubatch, None in where[:n_layer], head_pool == HOST)
        if None in where
        else 2 * n_ubatch * info.embedding_length * F32
    )
    parts = [Vector.of(weights), Vector.of(kv), Vector.of(compute), Vector.of(overhead)]
    return Footprint(parts[0] + parts[1] + parts[2] + parts[3], *parts)


def measured_vector(
    estimate: Vector,
    host_rss: int | None,
    device_buffers: Mapping[str, int],
    device_process_bytes: Mapping[str, int | None],
) -> Vector:
    """What a loaded model holds, per pool: the host is the worker's resident memory; a GPU is what
    the driver says the worker holds there (NVML per process), else llama.cpp's logged buffers plus
    the CUDA context. A pool without any figure keeps its estimate."""
    measured: dict[str, int] = {}
    for pool in estimate.pools:
        if pool == HOST:
            measured[pool] = host_rss if host_rss is not None else estimate[pool]
        elif device_process_bytes.get(pool) is not None:
            measured[pool] = int(device_process_bytes[pool] or 0)
        elif pool in device_buffers:
            measured[pool] = device_buffers[pool] + GPU_CONTEXT_BYTES
        else:
            measured[pool] = estimate[pool]
    return Vector.of(measured)
