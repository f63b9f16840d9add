"""How much memory this process may use: physical memory, or less where a cgroup limits it (a
container's `--memory`, a Kubernetes limit, a systemd `MemoryMax`), so `auto` budgets never promise
memory the kernel's OOM killer would not let the workers have."""

from __future__ import annotations

from pathlib import Path

import psutil

UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge page-rounded number, v2 as "max"


def host_memory_total(cgroup_root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")) -> int:
    total = int(psutil.virtual_memory().total)
    limit = cgroup_memory_limit(cgroup_root, proc)
    return min(total, limit) if limit is not None else total


def cgroup_memory_limit(cgroup_root: Path, proc: Path) -> int | None:
    """The tightest memory limit on this process's cgroup and its ancestors (v1 or v2), if any.

    Inside a container the mount shows the container's own cgroup as the root while /proc may still
    name the path on the host, so every ancestor down to the mount's root is read, and what exists counts."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and controllers == "":
            base, name = cgroup_root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = cgroup_root / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            value = _read_limit(base.joinpath(*parts[:depth]) / name)
            if value is not None:
                limits.append(value)
    return min(limits, default=None)


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max", or unreadable
        return None
    value = int(text)
    return value if 0 < value < UNLIMITED else None
