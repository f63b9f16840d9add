"""The regression corpus (tests/fuzz_corpus/crashers.json): every input that crashed or wedged the
gateway, replayed by the fast tier (fake llama.cpp) and the real tier (real models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus" / "crashers.json"


def render(template: Any) -> str:
    """JSON text of a corpus body, expanding its templates (see the file's "about")."""
    if isinstance(template, dict):
        if "$repeat" in template:
            text, count = template["$repeat"]
            return json.dumps(text * count)
        if "$nest" in template:
            return "[" * template["$nest"] + "]" * template["$nest"]
        if "$raw" in template:
            return str(template["$raw"])
        if "$int" in template:
            return str(int(template["$int"]))
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in template.items()) + "}"
    if isinstance(template, list):
        return "[" + ",".join(render(v) for v in template) + "]"
    return json.dumps(template)


def cases() -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads(CORPUS.read_text())
    return list(data["cases"])
