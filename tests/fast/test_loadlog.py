"""llama.cpp's load log → bytes per device: CPU lines captured from real loads here, CUDA, Metal and
Vulkan lines in the formats those backends write."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.engine.loadlog import HOST, LoadReport, OutOfMemory, device_of, parse_lines, to_pools
from gateway.engine.worker.logcapture import LogCapture, failure_message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "loadlog"
MiB = 2**20


def report_of(name: str) -> LoadReport:
    return parse_lines((FIXTURES / name).read_text().splitlines())


def mib(value: float) -> int:
    return round(value * MiB)


@pytest.mark.parametrize(
    ("buffer", "device"),
    [
        ("CUDA0", "cuda0"),
        ("CUDA1", "cuda1"),
        ("CUDA_Host", HOST),
        ("CPU", HOST),
        ("CPU_Mapped", HOST),
        ("CPU_REPACK", HOST),
        ("Metal", "metal0"),
        ("Metal_Mapped", "metal0"),
        ("Vulkan0", "vulkan0"),
        ("Vulkan_Host", HOST),
        ("ROCm1", "rocm1"),
    ],
)
def test_buffer_names_map_to_devices(buffer: str, device: str) -> None:
    assert device_of(buffer) == device


def test_cpu_smollm2_captured_here() -> None:
    report = report_of("cpu-smollm2-135m-q4_1-ctx2048.log")
    kinds = {(b.device, b.kind): b.bytes for b in report.buffers}
    assert kinds == {
        (HOST, "model"): mib(92.10),
        (HOST, "output"): mib(0.19),
        (HOST, "KV"): mib(45.00),
        (HOST, "compute"): mib(99.38),
    }
    assert report.by_device() == {HOST: mib(92.10) + mib(0.19) + mib(45.00) + mib(99.38)}
    assert report.oom is None
    assert report.offloaded is None


def test_cpu_gemma_two_kv_buffers_and_repack() -> None:
    report = report_of("cpu-gemma3-270m-q4_k_m-ctx2048.log")
    names = [(b.name, b.kind, b.bytes) for b in report.buffers]
    assert ("CPU_REPACK", "model", mib(12.66)) in names
    assert [b.bytes for b in report.buffers if b.kind == "KV"] == [mib(6.0), mib(30.0)]  # SWA and full layers
    assert set(report.by_device()) == {HOST}


def test_cuda_one_gpu() -> None:
    report = report_of("cuda-one-gpu.log")
    assert report.by_device() == {
        "cuda0": mib(92.10) + mib(45.00) + mib(98.00),
        HOST: mib(27.00) + mib(0.19) + mib(5.13),
    }
    assert report.free_at_load == {"cuda0": 142552 * MiB}
    assert report.descriptions == {"cuda0": "NVIDIA H200"}
    assert report.offloaded == (31, 31)


def test_cuda_two_gpus_in_the_older_format() -> None:
    report = report_of("cuda-two-gpus-old-format.log")
    by_device = report.by_device()
    assert by_device["cuda0"] == mib(1800.50) + mib(256) + mib(300.01)
    assert by_device["cuda1"] == mib(2000.25) + mib(256) + mib(400.02)
    assert by_device[HOST] == mib(125) + mib(0.12) + mib(40.02)
    assert report.free_at_load == {"cuda0": 40001 * MiB, "cuda1": 39500 * MiB}
    assert report.offloaded == (33, 33)


def test_metal_and_vulkan() -> None:
    metal = report_of("metal.log")
    assert metal.by_device() == {"metal0": mib(92.10) + mib(45) + mib(98), HOST: mib(27) + mib(0.19) + mib(5.13)}
    vulkan = report_of("vulkan.log")
    assert vulkan.by_device()["vulkan0"] == mib(60) + mib(30) + mib(1.5) + mib(98)
    assert ("vulkan0", "RS") in {(b.device, b.kind) for b in vulkan.buffers}
    assert vulkan.descriptions == {"vulkan0": "AMD Radeon RX 7900 XTX (RADV NAVI31)"}
    assert vulkan.offloaded == (20, 31)


def test_cuda_oom_names_device_and_size() -> None:
    report = report_of("cuda-oom.log")
    assert report.oom is not None
    assert report.oom.device == "cuda0"
    assert report.oom.need == 39520 * MiB
    assert "cudaMalloc failed: out of memory" in report.oom.line
    assert report.buffers == ()


def test_compute_buffer_oom_after_weights_loaded() -> None:
    report = report_of("cuda-oom-compute.log")
    assert report.oom == OutOfMemory(
        "cuda0", 1310720000, "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1310720000"
    )
    assert report.by_device() == {"cuda0": mib(92.10) + mib(45)}


def test_vulkan_oom() -> None:
    report = report_of("vulkan-oom.log")
    assert report.oom is not None
    assert report.oom.need == 1073741824
    assert report.oom.device == "vulkan0"  # filled in from the later "unable to allocate Vulkan0 buffer"


def test_unrelated_lines_change_nothing() -> None:
    lines = [
        "llama_kv_cache: size =   45.00 MiB (  2048 cells,  30 layers,  1/1 seqs), K (f16):   22.50 MiB",
        "load_tensors: layer   0 assigned to device CPU, is_swa = 0",
        "print_info: n_vocab = 49152",
    ]
    assert parse_lines(lines) == LoadReport()


def test_wire_round_trip() -> None:
    for name in ("cuda-two-gpus-old-format.log", "cuda-oom.log", "vulkan.log"):
        report = report_of(name)
        assert LoadReport.from_wire(report.to_wire()) == report


def test_capture_joins_pieces_and_keeps_errors() -> None:
    capture = LogCapture()
    text = (FIXTURES / "cuda-oom-compute.log").read_text()
    for i in range(0, len(text), 7):  # llama.cpp may hand over a line in several calls
        capture.feed(1, text[i : i + 7])
    capture.feed(4, "llama_init_from_model: could not initialize the context\n")
    assert capture.report() == report_of("cuda-oom-compute.log")
    assert list(capture.errors)[-1] == "llama_init_from_model: could not initialize the context"


def test_capture_tells_of_each_allocation_failure_as_it_is_logged() -> None:
    """After the load the worker forwards a CUDA error before it aborts: the capture says so at once."""
    capture = LogCapture()
    seen: list[OutOfMemory] = []
    capture.on_oom = seen.append
    capture.feed(2, "llama_kv_cache:      CUDA0 KV buffer size =    45.00 MiB\n")
    assert seen == []
    capture.feed(4, "CUDA error: out of memory\n")
    capture.feed(4, "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 20.00 MiB on device 1: ")
    capture.feed(4, "cudaMalloc failed: out of memory\n")
    assert seen == [
        OutOfMemory(None, None, "CUDA error: out of memory"),
        OutOfMemory(
            "cuda1",
            20 * MiB,
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 20.00 MiB on device 1: "
            "cudaMalloc failed: out of memory",
        ),
    ]


def test_cublas_allocation_failures_read_as_out_of_memory() -> None:
    """cuBLAS's handle and workspace are allocated at the first decode; when the device is full
    ggml-cuda aborts with cuBLAS's status string (or its name on older toolkits)."""
    capture = LogCapture()
    seen: list[OutOfMemory] = []
    capture.on_oom = seen.append
    capture.feed(4, "CUDA error: the resource allocation failed\n")
    capture.feed(4, "CUDA error: CUBLAS_STATUS_ALLOC_FAILED\n")
    capture.feed(4, "CUDA error: CUBLAS_STATUS_NOT_SUPPORTED\n")
    assert [oom.line for oom in seen] == [
        "CUDA error: the resource allocation failed",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED",
    ]


def test_capture_parses_a_last_line_without_newline() -> None:
    capture = LogCapture()
    capture.feed(1, "load_tensors:        CUDA0 model buffer size =    10.00 MiB")
    assert capture.report().by_device() == {"cuda0": 10 * MiB}


def test_failure_message_says_where_memory_ran_out() -> None:
    message = failure_message(ValueError("Failed to load model"), report_of("cuda-oom.log"), [])
    assert message.startswith("ValueError: Failed to load model (out of memory on cuda0 allocating 39520 MiB")
    assert failure_message(ValueError("x"), LoadReport(), ["bad magic"]) == "ValueError: x (bad magic)"


def test_worker_devices_map_onto_gateway_pools() -> None:
    # A worker given cuda2 and cuda3 sees them as its CUDA0 and CUDA1.
    report = report_of("cuda-two-gpus-old-format.log")
    pools = to_pools(report, ["cuda2", "cuda3"])
    assert set(pools) == {HOST, "cuda2", "cuda3"}
    assert pools["cuda3"] == report.by_device()["cuda1"]
