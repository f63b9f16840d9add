"""What a request may cost in tokens, judged from its body before it runs (as OpenAI's limiter does):
its prompt estimated from the text it carries, its completion taken at its `max_tokens`. The real
counts replace the estimate when the request ends."""

from __future__ import annotations

import json
import math
from typing import Any

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and code
PROMPT_FIELDS = ("messages", "input", "prompt", "system", "instructions", "tools", "functions")
COMPLETION_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _text_length(value: Any) -> int:
    """Characters of text in a JSON value; inline data (images, audio as data: URLs) is not text."""
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, dict):
        return sum(_text_length(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_length(v) for v in value)
    return 0


def estimate(body: bytes) -> int:
    """Prompt tokens (estimated) plus the completion tokens the request may generate (`max_tokens`
    and its other names, times `n`); 0 for a body that is not a JSON object."""
    try:
        data = json.loads(body)
    except ValueError:
        return 0
    if not isinstance(data, dict):
        return 0
    prompt = math.ceil(sum(_text_length(data.get(f)) for f in PROMPT_FIELDS) / CHARS_PER_TOKEN)
    completion = next((v for f in COMPLETION_FIELDS if isinstance(v := data.get(f), int) and v > 0), 0)
    n = data.get("n")
    choices = n if isinstance(n, int) and n > 1 else 1
    return prompt + completion * choices
