"""A chat's reasoning, planned: which format the model thinks in (`model.reasoning.format`, else its
chat template's), the budget and template switches the request's settings come to, and the shaper
that keeps the thinking apart from the answer. Settings that ask for no reasoning are accepted by
every model; reasoning asked of a model that does not reason is a 400 naming the parameter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.config import ModelEntry
from gateway.engine import reasoning
from gateway.errors import invalid_request
from gateway.protocol.reasoning import Ask
from gateway.serving.tools.calls import Piece, Shaper

# Variables the gateway itself gives the chat template: chat_template_kwargs may not replace them.
RESERVED_TEMPLATE_VARIABLES = frozenset(
    {"messages", "tools", "functions", "function_call", "tool_choice", "add_generation_prompt", "bos_token",
     "eos_token", "raise_exception", "strftime_now"}
)  # fmt: skip


@dataclass(frozen=True)
class ReasoningPlan:
    format: str | None = None  # the model's format; None: it does not reason
    budget: int | None = None
    split: bool = False  # the answer keeps thinking apart from content
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict[str, Any] | None:
        return None if self.format is None else {"format": self.format, "budget": self.budget}

    def shaper(self, inner: Shaper) -> Shaper:
        return ThinkingShaper(inner, reasoning.splitter(self.format)) if self.split and self.format else inner


def plan_reasoning(ask: Ask, entry: ModelEntry, model_id: str, gguf_template: str | None) -> ReasoningPlan:
    kwargs = dict(ask.template_kwargs)
    reserved = sorted(RESERVED_TEMPLATE_VARIABLES & kwargs.keys())
    if reserved:
        raise invalid_request(
            f"chat_template_kwargs may not set {', '.join(reserved)}: the gateway sets them.", "chat_template_kwargs"
        )
    template = reasoning.model_template(entry, gguf_template)
    fmt = reasoning.format_for(entry.model.reasoning.format, template)
    if fmt is None:
        if ask.asked:
            raise invalid_request(
                f"Model '{model_id}' does not support reasoning: '{ask.param}' asks for it.", ask.param,
                code="unsupported_parameter",
            )  # fmt: skip
        return ReasoningPlan(template_kwargs=kwargs)
    budget = entry.model.reasoning.budget
    switch = reasoning.template_switch(template)
    if ask.effort == "none":
        if switch is not None:
            kwargs.setdefault(switch, False)
        budget = 0  # a model that thinks anyway has its block closed at once
    elif ask.effort is not None:
        if switch is not None:
            kwargs.setdefault(switch, True)
        if reasoning.template_takes_effort(template):
            kwargs.setdefault("reasoning_effort", "low" if ask.effort == "minimal" else ask.effort)
        elif reasoning.EFFORT_BUDGETS[ask.effort] is not None:
            budget = reasoning.EFFORT_BUDGETS[ask.effort]
    if ask.budget is not None:
        budget = ask.budget
    return ReasoningPlan(fmt, budget, not ask.raw, kwargs)


class ThinkingShaper(Shaper):
    """The thinking as ("reasoning", text) pieces; the answer goes on to the tool shaper, so that
    text inside the thinking is never read as a tool call."""

    def __init__(self, inner: Shaper, split: reasoning.Splitter | reasoning.HarmonySplitter) -> None:
        super().__init__()
        self._inner = inner
        self._split = split

    @property
    def called(self) -> bool:
        return self._inner.called

    def feed(self, text: str) -> list[Piece]:
        return self._pieces(self._split.feed(text))

    def finish(self) -> list[Piece]:
        return [*self._pieces(self._split.finish()), *self._inner.finish()]

    def _pieces(self, split: list[reasoning.Piece]) -> list[Piece]:
        out: list[Piece] = []
        for kind, text in split:
            out.extend([("reasoning", text)] if kind == "reasoning" else self._inner.feed(text))
        return out

    def text(self) -> str | None:
        return self._inner.text()
