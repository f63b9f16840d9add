"""What a request asks of a reasoning model's thinking, in no API's shape: OpenAI's chat fields,
Anthropic's `thinking` and the Responses API's `reasoning` all come to one `Ask`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ask:
    """What a request asks of the model's thinking, in any API: effort (none..high), a budget in
    tokens, whether the answer keeps it apart, and the template's variables."""

    effort: str | None = None
    budget: int | None = None
    raw: bool = False  # reasoning_format "none": the model's text as it came, in content
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    param: str = "reasoning_effort"  # the field a refusal names
    asked: bool = False  # the request asks for thinking (a 400 on a model that does not reason)
