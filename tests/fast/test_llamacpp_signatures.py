"""Every call the worker makes straight into llama.cpp passes as many arguments as the installed
binding declares. The fake llama.cpp of the fast tier has no C signatures, so a changed one (the
penalties sampler gained n_vocab) only showed when a real worker died on it."""

from __future__ import annotations

import ast
from pathlib import Path

import llama_cpp

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
LIBRARY_NAMES = {"lib", "_lib", "llama_cpp"}  # how the worker's modules name the binding


def direct_calls() -> list[tuple[str, int, str, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            if name in LIBRARY_NAMES:
                found.append((path.name, node.lineno, node.func.attr, len(node.args)))
    return found


def test_direct_llama_cpp_calls_match_the_binding() -> None:
    calls = direct_calls()
    assert len(calls) > 20  # the sampler chain, batch, memory and vocabulary calls are all found
    wrong = []
    for file, line, function, given in calls:
        binding = getattr(llama_cpp, function, None)
        assert binding is not None, f"{file}:{line}: llama_cpp has no {function}"
        declared = getattr(binding, "argtypes", None)
        if isinstance(declared, list | tuple) and len(declared) != given:
            wrong.append(f"{file}:{line}: {function} takes {len(declared)} arguments, given {given}")
    assert wrong == []


def test_weights_stay_out_of_extra_buffers_only_where_the_cpu_backend_has_amx() -> None:
    from types import SimpleNamespace

    from gateway.engine.worker.backend import without_amx

    amx = SimpleNamespace(llama_print_system_info=lambda: b"CPU : AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 |")
    plain = SimpleNamespace(llama_print_system_info=lambda: b"CPU : AVX2 = 1 | AMX_INT8 = 0 | REPACK = 1 |")
    assert without_amx(amx) and not without_amx(plain)
