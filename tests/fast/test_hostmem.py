"""The memory this process may use: physical memory, or a cgroup's limit below it (v1 and v2, read
as a container and as a systemd service see them)."""

from __future__ import annotations

from pathlib import Path

import psutil

from gateway.memory.hostmem import cgroup_memory_limit, host_memory_total

GIB = 2**30


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_container_namespace_root(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/\n")
    write(tmp_path / "cg" / "memory.max", f"{4 * GIB}\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") == 4 * GIB


def test_v2_service_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/system.slice/gateway.service\n")
    write(tmp_path / "cg" / "system.slice" / "gateway.service" / "memory.max", "max\n")
    write(tmp_path / "cg" / "system.slice" / "memory.max", f"{6 * GIB}\n")
    write(tmp_path / "cg" / "memory.max", f"{9 * GIB}\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") == 6 * GIB


def test_v1_path_from_the_host_with_the_container_mounted_as_root(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: /proc names the host path, the mount shows the container's cgroup.
    write(tmp_path / "proc", "9:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    write(tmp_path / "cg" / "memory" / "memory.limit_in_bytes", f"{3 * GIB}\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") == 3 * GIB


def test_unlimited_or_unreadable_is_no_limit(tmp_path: Path) -> None:
    write(tmp_path / "proc", "4:memory:/\n0::/\n")
    write(tmp_path / "cg" / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    write(tmp_path / "cg" / "memory.max", "max\n")
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "proc") is None
    assert cgroup_memory_limit(tmp_path / "cg", tmp_path / "missing") is None


def test_total_is_the_smaller_of_physical_memory_and_the_limit(tmp_path: Path) -> None:
    physical = psutil.virtual_memory().total
    write(tmp_path / "proc", "0::/\n")
    write(tmp_path / "cg" / "memory.max", f"{GIB}\n")
    assert host_memory_total(tmp_path / "cg", tmp_path / "proc") == min(physical, GIB)
    write(tmp_path / "cg" / "memory.max", f"{physical * 2}\n")
    assert host_memory_total(tmp_path / "cg", tmp_path / "proc") == physical
