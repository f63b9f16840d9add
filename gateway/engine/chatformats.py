"""llama-cpp-python's named chat formats (`model.chat_format`), known without importing llama_cpp:
the gateway process never loads llama.cpp, yet an unknown name should stop a configuration at
startup, not fail the model's first load."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

_FORMAT = re.compile(r"^def format_(\w+)\(", re.MULTILINE)


def spellings(name: str) -> tuple[str, ...]:
    """How a configured name may match a `format_<name>` function: as written, with "-" as "_", or
    without "-" ("mistral-instruct", "llama-2")."""
    return (name, name.replace("-", "_"), name.replace("-", ""))


@functools.cache
def known() -> frozenset[str] | None:
    """Every `format_<name>` llama_cpp.llama_chat_format defines, read from its source; None when
    llama-cpp-python is not installed where this process can see it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    source = Path(spec.origin).with_name("llama_chat_format.py")
    try:
        return frozenset(_FORMAT.findall(source.read_text(encoding="utf-8")))
    except OSError:
        return None


def unknown(name: str) -> bool:
    """Whether `name` matches none of the installed formats (False when they cannot be read)."""
    names = known()
    return names is not None and not any(s in names for s in spellings(name))
