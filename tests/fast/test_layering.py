"""Module dependencies point downward only (DESIGN.md §2), checked by parsing imports."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "units": set(),
    "gguf_info": set(),
    "gguf_header": {"gguf_info"},
    "config.values": {"units"},
    "config.model": {"config.values", "errors", "structured"},
    "config.remote": {"config.values"},
    "config.settings": {"config.model", "config.remote", "config.values"},
    "config.loading": {"config.model", "config.settings", "errors"},
    "config.__init__": {"config.loading", "config.model", "config.remote", "config.settings"},
    "limits": set(),
    "jsonbody": {"errors", "limits"},
    "structured": {"errors"},
    "protocol.validation": {"errors", "jsonbody"},
    "protocol.parts": {"limits", "structured", "protocol.validation"},
    "protocol.generation": {"errors", "limits", "structured", "protocol.parts", "protocol.validation"},
    "protocol.extras": {"errors", "limits", "protocol.validation"},
    "protocol.__init__": {"protocol.extras", "protocol.generation", "protocol.parts"},
    "hostmem": set(),
    "chatformats": set(),
    "memory": {"chatformats", "config", "engine.kv", "errors", "gguf_header", "gguf_info", "hostmem", "pools"},
    "pools": set(),
    "footprint": {"gguf_info", "memory", "pools"},
    "inventory": {"pools"},
    "fakenvml": set(),
    "placement": {"footprint", "pools"},
    "capacity": {"config", "footprint", "memory", "placement", "pools", "units"},
    "engine.stops": set(),
    "engine.deltas": set(),
    "tools": {"structured"},
    "toolprompt": {"tools"},
    "engine.base": {"config", "errors", "engine.loadlog"},
    "engine.backend": set(),
    "engine.wire": {"engine.base"},
    "engine.kv": set(),
    "engine.constraint": {"errors", "structured"},
    "engine.sampling": {"errors", "engine.backend"},
    "engine.output": {"engine.backend", "engine.deltas", "engine.sampling", "engine.stops"},
    "engine.guard": {"errors"},
    "engine.embedding": {"errors", "engine.backend", "engine.guard", "engine.wire"},
    "engine.prompt": {"chatformats", "errors", "engine.base"},
    "engine.llamacpp": {"engine.backend", "engine.constraint", "engine.kv"},
    "engine.sequences": {"engine.backend", "engine.output"},
    "engine.parallel": {
        "errors",
        "engine.backend",
        "engine.base",
        "engine.guard",
        "engine.kv",
        "engine.output",
        "engine.sequences",
    },
    "engine.looppipe": set(),
    "engine.modelload": {"engine.backend", "engine.guard", "engine.kv", "engine.llamacpp", "engine.prompt"},
    "engine.worker": {
        "errors",
        "engine.backend",
        "engine.base",
        "engine.embedding",
        "engine.logcapture",
        "engine.modelload",
        "engine.parallel",
        "engine.prompt",
        "engine.sampling",
        "engine.sequences",
        "engine.wire",
    },
    "engine.fakellama": {"engine.backend", "engine.base", "engine.guard"},
    "engine.fakeworker": {
        "config",
        "engine.base",
        "engine.embedding",
        "engine.fakellama",
        "engine.fakeprocess",
        "engine.loadlog",
        "engine.logcapture",
        "engine.process",
        "engine.spares",
        "engine.wire",
        "engine.worker",
        "fakenvml",
    },
    "engine.fakeprocess": {"engine.wire"},
    "engine.loadlog": set(),
    "engine.logcapture": {"engine.loadlog"},
    "engine.workerprocess": {"config"},
    "engine.process": {
        "config",
        "errors",
        "memory",
        "engine.base",
        "engine.loadlog",
        "engine.looppipe",
        "engine.spares",
        "engine.wire",
        "engine.workerprocess",
    },
    "engine.spares": {"engine.worker"},
    "watch": set(),
    "upstream.__init__": set(),
    "upstream.breaker": set(),
    "upstream.client": {"config"},
    "upstream.failover": {"config", "errors", "upstream.breaker", "upstream.client"},
    "upstream.proxy": {"config", "errors", "record", "upstream.breaker", "upstream.client", "upstream.failover"},
    "collectors": set(),
    "metrics": {"collectors"},
    "scheduler.views": {"config", "memory", "engine.base", "pools"},
    "scheduler.slot": {"config", "footprint", "memory", "engine.base", "pools", "scheduler.views"},
    "scheduler.eviction": {"placement", "pools", "scheduler.views"},
    "scheduler.devices": {
        "capacity",
        "config",
        "engine.base",
        "engine.loadlog",
        "footprint",
        "inventory",
        "memory",
        "placement",
        "pools",
    },
    "scheduler.reload": {"config"},
    "scheduler.cpu": set(),
    "scheduler.observer": set(),
    "scheduler.hold": {"config", "engine.base", "scheduler.views", "scheduler.slot"},
    "scheduler.lifecycle": {
        "config",
        "errors",
        "memory",
        "engine.base",
        "pools",
        "scheduler.devices",
        "scheduler.eviction",
        "scheduler.observer",
        "scheduler.slot",
        "scheduler.views",
    },
    "scheduler.loading": {
        "errors",
        "engine.base",
        "engine.loadlog",
        "footprint",
        "placement",
        "pools",
        "scheduler.eviction",
        "scheduler.lifecycle",
        "scheduler.slot",
        "scheduler.views",
    },
    "scheduler.core": {
        "config",
        "errors",
        "memory",
        "engine.base",
        "inventory",
        "scheduler.cpu",
        "scheduler.devices",
        "scheduler.eviction",
        "scheduler.hold",
        "scheduler.loading",
        "scheduler.observer",
        "scheduler.reload",
        "scheduler.slot",
        "scheduler.views",
    },
    "scheduler.__init__": {"scheduler.core", "scheduler.hold", "scheduler.observer", "scheduler.views"},
    "streaming": {"errors", "record", "responses", "tools", "engine.base"},
    "toolplan": {"protocol", "scheduler.views", "structured", "toolprompt", "tools"},
    "plan": {"config", "errors", "protocol", "responses", "toolplan", "engine.base", "scheduler.views"},
    "dispatch": {"errors", "plan", "record", "scheduler", "streaming", "engine.base"},
    "auth": {"config"},
    "record": set(),
    "accesslog": {"record"},
    "middleware": {"auth", "errors", "record", "dialects.anthropic_reply"},
    "admin": {"scheduler", "toolplan"},
    "responses": set(),
    "web": {"auth", "record", "scheduler", "upstream.proxy"},
    "remote_routes": {"errors", "responses", "web"},
    "routes": {
        "dispatch",
        "errors",
        "plan",
        "protocol",
        "remote_routes",
        "responses",
        "scheduler",
        "streaming",
        "web",
    },
    "info_routes": {"metrics", "remote_routes", "responses", "routes", "scheduler", "toolplan", "web"},
    "dialects.__init__": set(),
    "dialects.common": {"errors", "protocol.validation"},
    "dialects.anthropic_request": {"dialects.common", "errors", "protocol"},
    "dialects.anthropic_reply": {"errors"},
    "dialects.relay": {"dispatch", "errors", "streaming", "web"},
    "dialects.anthropic_routes": {
        "dialects.anthropic_reply",
        "dialects.anthropic_request",
        "dialects.relay",
        "dispatch",
        "routes",
        "web",
    },
    "dialects.responses_request": {"dialects.common", "errors", "protocol"},
    "dialects.responses_reply": {"dialects.responses_request"},
    "dialects.responses_events": {"dialects.responses_reply", "errors"},
    "dialects.response_store": set(),
    "dialects.responses_routes": {
        "dialects.relay",
        "dialects.response_store",
        "dialects.responses_events",
        "dialects.responses_reply",
        "dialects.responses_request",
        "dispatch",
        "errors",
        "routes",
        "web",
    },
    "route_table": {
        "admin",
        "dialects.anthropic_routes",
        "dialects.responses_routes",
        "errors",
        "info_routes",
        "middleware",
        "routes",
    },
    "gauges": {"collectors", "scheduler"},
    "workers": {"config", "engine.base", "engine.process", "engine.spares"},
    "app": {
        "dialects.response_store",
        "accesslog",
        "auth",
        "config",
        "errors",
        "gauges",
        "inventory",
        "memory",
        "metrics",
        "middleware",
        "record",
        "route_table",
        "scheduler",
        "watch",
        "upstream.proxy",
        "workers",
    },
    "measure": {"config", "engine.base", "errors", "memory", "scheduler", "units", "workers"},
    "cli": {
        "capacity",
        "config",
        "errors",
        "hostmem",
        "inventory",
        "measure",
        "memory",
        "pools",
        "units",
        "app",
        "engine.modelload",
    },
    "__main__": {"cli"},
    "__init__": set(),
    "engine.__init__": set(),
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def imports_of(path: Path) -> set[str]:
    """Imported module names; `from a import b` counts as `a.b` when b is a module of ours, else `a`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule.removeprefix("gateway.") in ALLOWED else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_every_module_is_listed() -> None:
    assert {module_name(p) for p in PACKAGE.rglob("*.py")} == set(ALLOWED)


def test_dependencies_point_downward() -> None:
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        ours = {i.removeprefix("gateway.") for i in imports_of(path) if i.startswith("gateway.")}
        ours.discard(name)
        assert ours <= ALLOWED[name], f"{name} imports {sorted(ours - ALLOWED[name])}"


def test_no_cycles() -> None:
    """The allowed graph itself has no cycle (a package name stands for its __init__)."""

    def edges(name: str) -> set[str]:
        return {d if d in ALLOWED else f"{d}.__init__" for d in ALLOWED[name]} - {name}

    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for dependency in edges(name):
                visit(dependency, (*path, name))
            done.add(name)

    for name in ALLOWED:
        visit(name, ())


WORKER_SIDE = {
    "engine.worker",
    "engine.modelload",
    "engine.loadlog",
    "engine.logcapture",
    "engine.sampling",
    "engine.embedding",
    "engine.parallel",
    "engine.guard",
    "engine.constraint",
    "engine.prompt",
    "engine.llamacpp",
    "engine.output",
    "engine.kv",
    "engine.backend",
    "engine.wire",
    "engine.sequences",
}


def test_llama_cpp_is_imported_only_by_the_worker() -> None:
    # (cli's `check` reaches llama_cpp through engine.worker.backend_info, never on the request path)
    for path in PACKAGE.rglob("*.py"):
        uses = any(i == "llama_cpp" or i.startswith("llama_cpp.") for i in imports_of(path))
        assert not uses or module_name(path) in WORKER_SIDE, module_name(path)


def test_worker_side_stays_free_of_the_web_stack() -> None:
    """A worker imports these at start: pydantic, starlette and friends would cost every worker memory."""
    heavy = ("pydantic", "starlette", "uvicorn", "sse_starlette", "yaml", "prometheus_client")
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) in WORKER_SIDE | {"engine.base", "engine.stops", "engine.deltas", "errors", "tools"}:
            module_level = [
                alias.name if isinstance(node, ast.Import) else node.module or ""
                for node in ast.parse(path.read_text()).body
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(name=node.module or "")])
            ]
            assert not [m for m in module_level if m.split(".")[0] in heavy], module_name(path)


def test_llama_cpp_starts_only_after_the_worker_environment_is_set() -> None:
    """worker.main sets CUDA_VISIBLE_DEVICES before importing llama_cpp; a module-level import on the
    worker side would start the GPU runtime first, seeing every device."""
    for path in PACKAGE.rglob("*.py"):
        top_level = [
            alias.name if isinstance(node, ast.Import) else node.module or ""
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(name=node.module or "")])
        ]
        assert not [m for m in top_level if m.split(".")[0] == "llama_cpp"], module_name(path)
