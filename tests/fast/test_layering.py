"""The house's rules (docs/architecture.md): each folder of gateway/ is a room with a role, and a room
imports only the rooms below it, checked by parsing every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

# Each room and what it may import. A module belongs to the room with the longest name that is its own
# or a package above it; "engine" is the seam both sides of a worker share (base, wire, loadlog,
# sizing, chatformats). An entry naming a module rather than a room allows that module alone.
RULES: dict[str, set[str]] = {
    "__main__": {"cli"},
    "cli": {"web", "scheduler", "memory", "engine", "engine.process", "engine.worker.load", "config", "errors"},
    "web": {
        "serving",
        "dialects",
        "store",
        "scheduler",
        "upstream",
        "access",
        "memory",
        "engine.process",
        "engine.reasoning",
        "observability",
        "protocol",
        "config",
        "errors",
    },
    "serving": {
        "images",
        "scheduler",
        "upstream",
        "access",
        "engine",
        "observability",
        "protocol",
        "config",
        "structured",
        "errors",
    },
    "scheduler": {"memory", "engine", "observability", "config", "errors"},
    "upstream": {"observability", "config", "errors"},
    "memory": {"gguf", "engine", "config", "errors"},
    "engine.process": {"engine", "engine.worker.main", "config", "errors"},  # the worker's main: its process target
    "engine.worker": {"engine", "config", "structured", "errors"},
    "engine": {"config", "errors"},
    "testing": {"engine", "engine.process", "engine.worker", "config", "errors"},
    "dialects": {"protocol", "images", "errors"},
    "access": {"config", "errors"},
    "store": set(),
    "observability": set(),
    "config": {"structured", "errors"},
    "protocol": {"images", "structured", "errors"},
    "images": {"config", "errors"},
    "gguf": set(),
    "structured": {"errors"},
    "errors": set(),
    "__init__": set(),
}
WEB_STACK = ("starlette", "sse_starlette", "uvicorn")
HEAVY = ("pydantic", "starlette", "uvicorn", "sse_starlette", "yaml", "prometheus_client", "httpx")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")


def room_of(module: str) -> str:
    candidates = [r for r in RULES if module == r or module.startswith(f"{r}.")]
    assert candidates, f"gateway.{module} is in no room"
    return max(candidates, key=len)


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    """Imported module names; `from a import b` counts as `a.b` (b may be a module)."""
    nodes = ast.parse(path.read_text()).body if top_level_only else ast.walk(ast.parse(path.read_text()))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def allowed(importer: str, imported: str) -> bool:
    room, target = room_of(importer), room_of(imported)
    permitted = RULES[room]
    modules = permitted - set(RULES)  # entries that allow one module, not a room
    return target == room or target in permitted or any(imported == m or imported.startswith(f"{m}.") for m in modules)


def violations(imports: dict[str, set[str]]) -> list[str]:
    """`importer imports imported` for every import of ours the rules forbid."""
    found = []
    for importer, names in sorted(imports.items()):
        for name in sorted(names):
            ours = name.removeprefix("gateway.")
            if name.startswith("gateway.") and not allowed(importer, ours):
                found.append(f"{importer} imports {ours}")
    return found


def all_imports() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_is_in_a_room() -> None:
    for module in all_imports():
        room_of(module)


def test_imports_follow_the_rules() -> None:
    assert violations(all_imports()) == []


def test_the_rules_catch_an_upward_or_sideways_import() -> None:
    imports = {
        "serving.run": {"gateway.web.sse", "gateway.scheduler"},
        "engine.worker.batch": {"gateway.engine.process.handle", "gateway.engine.base"},
        "dialects.anthropic.reply": {"gateway.serving.run"},
        "scheduler.core": {"gateway.testing.fakeworker"},
        "engine.process.spares": {"gateway.engine.worker.batch", "gateway.engine.worker.main"},
    }
    assert violations(imports) == [
        "dialects.anthropic.reply imports serving.run",
        "engine.process.spares imports engine.worker.batch",
        "engine.worker.batch imports engine.process.handle",
        "scheduler.core imports testing.fakeworker",
        "serving.run imports web.sse",
    ]


def test_the_rooms_have_no_cycle() -> None:
    def visit(room: str, path: tuple[str, ...]) -> None:
        assert room not in path, " -> ".join((*path, room))
        for below in RULES[room]:
            visit(room_of(below), (*path, room))

    for room in RULES:
        visit(room, ())


def test_only_web_and_cli_know_http_serving() -> None:
    for path in PACKAGE.rglob("*.py"):
        uses = [i for i in imports_of(path) if i.split(".")[0] in WEB_STACK]
        assert not uses or room_of(module_name(path)) in ("web", "cli"), (module_name(path), uses)


def test_llama_cpp_is_imported_only_by_the_worker() -> None:
    """`gateway check` reaches it through engine.worker.load.backend_info, never the request path."""
    for path in PACKAGE.rglob("*.py"):
        uses = any(i.split(".")[0] == "llama_cpp" for i in imports_of(path))
        assert not uses or room_of(module_name(path)) == "engine.worker", module_name(path)


def test_llama_cpp_starts_only_after_the_worker_environment_is_set() -> None:
    """worker.main sets CUDA_VISIBLE_DEVICES before importing llama_cpp; a module-level import on the
    worker side would start the GPU runtime first, seeing every device."""
    for path in PACKAGE.rglob("*.py"):
        top = [i for i in imports_of(path, top_level_only=True) if i.split(".")[0] == "llama_cpp"]
        assert not top, module_name(path)


def test_a_worker_imports_no_web_stack() -> None:
    """A worker process imports its main module at start: pydantic, starlette, yaml and friends would
    cost every worker their memory."""
    script = f"import sys, gateway.engine.worker.main\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
