"""What llama.cpp allocated, per device, read from the lines it logs while loading a model.

llama.cpp logs every buffer it allocates (`load_tensors: CUDA0 model buffer size = 120.50 MiB`, the
KV cache, compute, output and recurrent-state buffers), the devices it uses with their free memory,
how many layers it offloaded, and allocation failures. The function name before the colon changes
between versions (`llm_load_tensors`, `load_tensors`, `llama_kv_cache_init`, `sched_reserve`...), so
the patterns below match on what follows it.

`parse_lines` is pure; `LogCapture` (`logcapture.py`) feeds it in the worker as llama.cpp logs.
Device names are the worker's own (`cuda0` is the first device the worker can see); the parent
maps them onto its pools (`pool_of`, `to_pools`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

HOST = "host"
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_SIZE = r"(?P<size>\d+(?:\.\d+)?)\s*(?P<unit>[KMG]iB|B)\b"
_BUFFER = re.compile(
    r"(?:^|:)\s*(?P<buf>[A-Za-z][\w]*)\s+(?:(?P<kind>model|KV|compute|output|RS)\s+)?buffer size\s*=\s*" + _SIZE
)
_DEVICE_FREE = re.compile(r"using device (?P<dev>\w+) (?P<rest>\(.*\)).*?- (?P<free>\d+) MiB free")
_OFFLOADED = re.compile(r"offloaded (?P<n>\d+)/(?P<m>\d+) layers to GPU")
_OOM_PATTERNS = (
    # ggml-cuda: "allocating 5120.00 MiB on device 0: cudaMalloc failed: out of memory"
    re.compile(r"allocating (?P<mib>\d+(?:\.\d+)?) MiB on device (?P<index>\d+): \w+ failed: out of memory"),
    # ggml-alloc / ggml-backend: "failed to allocate CUDA0 buffer of size 5368709120"
    re.compile(r"failed to allocate (?P<buf>\w+) buffer of size (?P<bytes>\d+)"),
    # llama-model: "unable to allocate CUDA0 buffer"
    re.compile(r"unable to allocate (?P<buf>\w+) buffer"),
    # ggml-vulkan: "Device memory allocation of size 1073741824 failed."
    re.compile(r"memory allocation of size (?P<bytes>\d+) failed"),
    # ggml-cuda's cuBLAS calls: "CUDA error: CUBLAS_STATUS_ALLOC_FAILED" / "resource allocation failed"
    re.compile(r"CUBLAS_STATUS_ALLOC_FAILED|resource allocation failed"),
    re.compile(r"out of memory|ErrorOutOfDeviceMemory|OutOfDeviceMemory", re.IGNORECASE),
)


def device_of(buffer_name: str) -> str:
    """The device (pool) a buffer lives in: `CUDA0` → cuda0, `CUDA_Host`/`CPU_Mapped` → host, `Metal` → metal0."""
    name = buffer_name.strip()
    upper = name.upper()
    if upper.startswith("CPU") or upper.endswith("_HOST") or upper in ("BLAS", "ACCEL", "AMX"):
        return HOST
    match = re.match(r"^([A-Za-z]+)(\d*)", name)
    if not match:
        return name.lower()
    backend, index = match.group(1).lower(), match.group(2) or "0"
    return f"{backend}{index}"


@dataclass(frozen=True)
class Buffer:
    device: str  # cuda0, host, metal0, vulkan0...
    kind: str  # model, KV, compute, output, RS
    bytes: int
    name: str  # as llama.cpp wrote it: CUDA0, CUDA_Host, CPU_Mapped...


@dataclass(frozen=True)
class OutOfMemory:
    device: str | None  # None when the line does not say
    need: int | None  # bytes of the allocation that failed, when the line says
    line: str


@dataclass(frozen=True)
class LoadReport:
    """Per-device figures from one load."""

    buffers: tuple[Buffer, ...] = ()
    free_at_load: dict[str, int] = field(default_factory=dict)  # device → bytes free when llama.cpp looked
    descriptions: dict[str, str] = field(default_factory=dict)  # device → "NVIDIA H200" etc.
    offloaded: tuple[int, int] | None = None  # (layers on GPUs, layers in the model + output)
    oom: OutOfMemory | None = None

    def by_device(self) -> dict[str, int]:
        """Bytes per device, summed over every buffer."""
        totals: dict[str, int] = {}
        for buffer in self.buffers:
            totals[buffer.device] = totals.get(buffer.device, 0) + buffer.bytes
        return totals

    def to_wire(self) -> dict[str, Any]:
        return {
            "buffers": [[b.device, b.kind, b.bytes, b.name] for b in self.buffers],
            "free_at_load": dict(self.free_at_load),
            "descriptions": dict(self.descriptions),
            "offloaded": list(self.offloaded) if self.offloaded else None,
            "oom": [self.oom.device, self.oom.need, self.oom.line] if self.oom else None,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LoadReport:
        oom = data.get("oom")
        offloaded = data.get("offloaded")
        return cls(
            buffers=tuple(Buffer(str(d), str(k), int(n), str(name)) for d, k, n, name in data.get("buffers", [])),
            free_at_load={str(k): int(v) for k, v in data.get("free_at_load", {}).items()},
            descriptions={str(k): str(v) for k, v in data.get("descriptions", {}).items()},
            offloaded=(int(offloaded[0]), int(offloaded[1])) if offloaded else None,
            oom=OutOfMemory(oom[0], oom[1], oom[2]) if oom else None,
        )


def _bytes(size: str, unit: str) -> int:
    return round(float(size) * _UNITS[unit])


def parse_oom(line: str) -> OutOfMemory | None:
    """The failed allocation a log line reports, if it reports one."""
    for pattern in _OOM_PATTERNS:
        match = pattern.search(line)
        if match is None:
            continue
        groups = match.groupdict()
        if groups.get("index") is not None:
            return OutOfMemory(f"cuda{groups['index']}", round(float(groups["mib"]) * 2**20), line.strip())
        device = device_of(groups["buf"]) if groups.get("buf") else None
        need = int(groups["bytes"]) if groups.get("bytes") else None
        return OutOfMemory(device, need, line.strip())
    return None


def _merge_oom(first: OutOfMemory | None, new: OutOfMemory) -> OutOfMemory:
    """Keep the first failure, filling in what later lines about it add (device, size)."""
    if first is None:
        return new
    return OutOfMemory(first.device or new.device, first.need or new.need, first.line)


def _first_group(text: str) -> str:
    """The contents of the first parenthesised group, nested parentheses included."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[1:i]
    return text.strip("()")


def parse_lines(lines: list[str], report: LoadReport | None = None) -> LoadReport:
    """Fold log lines into a report (pure)."""
    buffers = list(report.buffers) if report else []
    free = dict(report.free_at_load) if report else {}
    descriptions = dict(report.descriptions) if report else {}
    offloaded = report.offloaded if report else None
    oom = report.oom if report else None
    for line in lines:
        if "buffer size" in line and (match := _BUFFER.search(line)):
            name = match.group("buf")
            kind = match.group("kind") or "model"  # old versions: "llm_load_tensors: CPU buffer size"
            buffers.append(Buffer(device_of(name), kind, _bytes(match.group("size"), match.group("unit")), name))
        elif "using device" in line and (match := _DEVICE_FREE.search(line)):
            device = device_of(match.group("dev"))
            free[device] = int(match.group("free")) * 2**20
            descriptions[device] = _first_group(match.group("rest"))
        elif "offloaded" in line and (match := _OFFLOADED.search(line)):
            offloaded = (int(match.group("n")), int(match.group("m")))
        elif (failure := parse_oom(line)) is not None:
            oom = _merge_oom(oom, failure)
    return LoadReport(tuple(buffers), free, descriptions, offloaded, oom)


def pool_of(device: str, visible: list[str]) -> str:
    """The gateway's pool for one of the worker's own device names: its cuda0 is the first device it
    was given (`visible`)."""
    match = re.match(r"^[a-z]+(\d+)$", device)
    if device != HOST and match and int(match.group(1)) < len(visible):
        return visible[int(match.group(1))]
    return device


def to_pools(report: LoadReport, visible: list[str]) -> dict[str, int]:
    """Bytes per gateway pool: the worker's `cuda0` is the first device it was given (`visible`)."""
    pools: dict[str, int] = {}
    for device, size in report.by_device().items():
        pool = pool_of(device, visible)
        pools[pool] = pools.get(pool, 0) + size
    return pools
