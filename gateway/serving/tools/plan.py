"""How a chat uses its tools: the tool mode, decided once (`plan_tools`), and what follows from it:
the constraint a forced or generic call puts on the answer, the messages and tools the chat template
gets, and the shaper that turns a choice's text into content and tool calls. Pure; `serving/plan.py` holds it
in a request's plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway import structured
from gateway.protocol import ChatCompletionRequest
from gateway.scheduler.views import SlotView
from gateway.serving.tools.calls import (
    AutoCall,
    NamedCall,
    RequiredCall,
    Shaper,
    forced_hint,
    forced_schema,
    parameters_schema,
)
from gateway.serving.tools.generic import (
    GenericReply,
    generic_messages,
    generic_schema,
    has_tool_turns,
    response_schema,
    template_presents_tools,
)

ToolMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolPlan:
    """How a chat uses its tools; `mode` is decided here and nowhere else."""

    mode: ToolMode = "none"
    tools: tuple[dict[str, Any], ...] = ()
    forced: str | None = None  # the named tool_choice
    native: bool = True  # the model's chat template presents tools (else llama-server's generic format)
    generic: bool = False  # auto on a template without tools: answered in the generic format
    # No call may be made now, on a template without tools, after calls written in the generic format:
    # the answer is a generic `{"response"}`, so that the model cannot answer with a copy of their JSON.
    response_only: bool = False

    @property
    def forcing(self) -> bool:
        """The answer must be a call: its text is constrained by a grammar made from the tools."""
        return self.mode in ("named", "required")

    def constraint(self) -> dict[str, Any] | None:
        if self.forcing:
            return {"json_schema": forced_schema(list(self.tools), self.forced)}
        if self.generic:
            # The tools' schemas become part of the constraint here (not with a native template, where
            # the model only may call them), so here they must be ones the engine can enforce.
            for index, tool in enumerate(self.tools):
                structured.check(parameters_schema(tool), f"tools[{index}].function.parameters")
            return {"json_schema": generic_schema(list(self.tools))}
        if self.response_only:
            return {"json_schema": response_schema()}
        return None

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The chat as the template gets it: tools in a generic prompt when the template has no
        place for them, and a hint naming the call a forced answer must make."""
        if not self.native:  # tool turns of the history become text even when no tools are offered now
            offered = None if self.forcing or not self.tools else list(self.tools)
            messages = generic_messages(messages, offered, self.response_only)
        if self.forcing:
            messages = [{"role": "system", "content": forced_hint(list(self.tools), self.forced)}, *messages]
        return messages

    def for_template(self) -> list[dict[str, Any]] | None:
        return list(self.tools) if self.tools and self.native else None

    def shaper(self) -> Shaper:
        """A fresh shaper for one choice: how its text becomes content and tool calls."""
        names = {t["function"]["name"] for t in self.tools}
        if self.mode == "named":
            return NamedCall(self.forced or "")
        if self.mode == "required":
            return RequiredCall(names)
        if self.generic or self.response_only:
            return GenericReply(names if self.generic else set())
        if self.mode == "auto":
            return AutoCall(names)
        return Shaper()


def native_tools(view: SlotView) -> bool:
    """Whether the model's own chat template presents tools (else the generic tool prompt does)."""
    template = view.facts.info.metadata.get("tokenizer.chat_template")
    return template_presents_tools(view.entry.model.chat_format, template)


def plan_tools(chat: ChatCompletionRequest, view: SlotView) -> ToolPlan:
    """The request's tool mode (as `ChatCompletionRequest.tool_mode` defines it) and what follows from it."""
    mode = chat.tool_mode
    native = native_tools(view)
    # A response_format constrains the answer otherwise: the tools are then left to the prompt alone.
    plain = chat.response_format is None or chat.response_format.type == "text"
    if mode == "none" or not chat.tools:
        history = has_tool_turns([m.for_template() for m in chat.messages])
        unconstrained = plain and view.entry.output.grammar_schema is None
        return ToolPlan(native=native, response_only=not native and unconstrained and history)
    tools = tuple(t.model_dump(exclude_none=True) for t in chat.tools)
    generic = mode == "auto" and not native and plain
    return ToolPlan(mode, tools, chat.forced_tool, native, generic)  # type: ignore[arg-type]
