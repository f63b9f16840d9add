"""A request's plan: everything about it decided once, before anything runs.

`plan_chat` and `plan_completion` are pure functions of the parsed request, the model's snapshot
and the gateway settings: which model version, the tool mode (`tools/plan.py`) and the constraint
(grammar) it implies, the generations to run (sampling over the model's defaults, n, the completion
budget), and the shape of the answer (streamed or not, usage chunk, echo). Every 400 they can decide
is raised here, before a model is held or loaded. `plan_local_chat` is the chat path of the endpoints
only local models serve: resolve, note, then `plan_chat`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import GatewaySection, ModelEntry
from gateway.engine.base import MEDIA_MARKER, GenerationParams
from gateway.errors import invalid_request
from gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerationRequest,
    check_vocabulary,
)
from gateway.protocol.reasoning import Ask
from gateway.scheduler.views import SlotView
from gateway.serving.call import Call
from gateway.serving.images import ImageSource, plan_images
from gateway.serving.reasoning import ReasoningPlan, plan_reasoning
from gateway.serving.resolve import resolve_local
from gateway.serving.tools.calls import Shaper
from gateway.serving.tools.plan import ToolPlan, plan_tools

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


@dataclass(frozen=True)
class Plan:
    model_id: str
    entry: ModelEntry  # the version planned for
    generations: tuple[GenerationParams, ...]  # run one after another: a completion's prompts
    stream: bool
    include_usage: bool
    tools: ToolPlan = field(default_factory=ToolPlan)
    echo: tuple[str, ...] | None = None  # per choice, the prompt to send back first
    flex: bool = False  # the request asked to run at batch priority (service_tier "flex")
    reasoning: ReasoningPlan = field(default_factory=ReasoningPlan)
    images: tuple[ImageSource, ...] = ()  # a chat's images, loaded just before its model is held (run.py)
    # The same request planned again for another version of the model (a reload came in between).
    renew: Callable[[SlotView], Plan] | None = field(default=None, compare=False, repr=False)

    def shaper(self) -> Shaper:
        """A fresh shaper for one choice: thinking apart (a reasoning model), then content and tool calls."""
        return self.reasoning.shaper(self.tools.shaper())

    def for_version(self, view: SlotView) -> Plan:
        """This plan for the version actually held (the same plan when nothing changed)."""
        if view.entry == self.entry or self.renew is None:
            return self
        return self.renew(view)


def chat_ask(chat: ChatCompletionRequest) -> Ask:
    """What a chat completion asks of a reasoning model's thinking."""
    effort = chat.reasoning_effort
    return Ask(
        effort=effort,
        budget=chat.max_reasoning_tokens,
        raw=chat.reasoning_format == "none",
        template_kwargs=chat.chat_template_kwargs or {},
        param="reasoning_effort" if effort not in (None, "none") else "max_reasoning_tokens",
        asked=effort not in (None, "none") or bool(chat.max_reasoning_tokens),
    )


def plan_chat(chat: ChatCompletionRequest, view: SlotView, gateway: GatewaySection, ask: Ask | None = None) -> Plan:
    """`ask`: what a dialect's request asks of the thinking (else the chat's own fields)."""
    _generative(view)
    check_vocabulary(chat.token_ids(), view.facts.info.vocab_size, "logit_bias")
    model = view.entry.model
    if model.chat_format is None and model.chat_template is None and not view.facts.has_chat_template:
        raise invalid_request(
            f"Model '{view.model_id}' has no chat template in its GGUF and no model.chat_format in "
            "models.yaml, so chat messages cannot be formatted for it.",
            param="model",
            code="chat_template_missing",
        )
    images = plan_images(chat, view, gateway)
    tools = plan_tools(chat, view)
    entry = view.entry
    messages = tools.messages([m.for_template(MEDIA_MARKER) for m in chat.messages])
    constraint = _constraint(chat, tools, entry)
    gguf_template = view.facts.info.metadata.get("tokenizer.chat_template")
    thinking = plan_reasoning(ask or chat_ask(chat), entry, view.model_id, gguf_template)
    params = GenerationParams(
        messages=messages,
        tools=tools.for_template(),
        max_tokens=_pick(chat.completion_limit, entry.output.max_tokens),
        constraint=constraint,
        continue_final=_prefilled(messages, constraint),
        logprobs=bool(chat.logprobs),
        top_logprobs=chat.top_logprobs or 0,
        n=chat.choices,
        reasoning=thinking.wire(),
        template_kwargs=thinking.template_kwargs or None,
        **_sampling(chat, entry, gateway.stream_interval),
    )
    return Plan(
        view.model_id,
        entry,
        (params,),
        stream=bool(chat.stream),
        include_usage=chat.include_usage,
        tools=tools,
        flex=chat.flex,
        reasoning=thinking,
        images=images,
        renew=lambda again: plan_chat(chat, again, gateway, ask),
    )


def plan_local_chat(call: Call, chat: ChatCompletionRequest, ask: Ask | None = None) -> Plan:
    """A chat for an endpoint only local models serve (Anthropic's Messages, the Responses API): its
    model resolved for this client, its messages noted for the content log, then planned."""
    view = resolve_local(call, chat.model)
    call.note_chat(chat)
    return plan_chat(chat, view, call.scheduler.settings.gateway, ask)


def plan_completion(body: CompletionRequest, view: SlotView, gateway: GatewaySection) -> Plan:
    """Legacy text completions: each prompt is sent as is, without a chat template; choices are
    n per prompt, prompt by prompt."""
    _generative(view)
    check_vocabulary(body.token_ids(), view.facts.info.vocab_size, "logit_bias")
    entry = view.entry
    params = tuple(
        GenerationParams(
            messages=None,
            prompt=prompt,
            max_tokens=_pick(body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS),
            n=body.choices,
            logprobs=body.logprobs is not None,
            top_logprobs=body.logprobs or 0,
            **_sampling(body, entry, gateway.stream_interval),
        )
        for prompt in body.prompts
    )
    echo = tuple(p for p in body.prompts for _ in range(body.choices)) if body.echo else None
    return Plan(
        view.model_id,
        entry,
        params,
        stream=bool(body.stream),
        include_usage=body.include_usage,
        echo=echo,
        flex=body.flex,
        renew=lambda again: plan_completion(body, again, gateway),
    )


def check_embedding(body: EmbeddingRequest, view: SlotView) -> None:
    if not view.entry.embedding:
        raise invalid_request(
            f"Model '{view.model_id}' is not an embedding model (set embedding: true in models.yaml).", param="model"
        )
    size = view.facts.info.embedding_length
    if body.dimensions is not None and body.dimensions != size:
        raise invalid_request(
            f"Model '{view.model_id}' makes {size}-dimensional embeddings and cannot shorten them; "
            "omit 'dimensions' or set it to that.",
            param="dimensions",
        )
    check_vocabulary(body.token_ids(), view.facts.info.vocab_size, "input")


def _generative(view: SlotView) -> None:
    if view.entry.embedding:
        raise invalid_request(
            f"Model '{view.model_id}' is an embedding model: use /v1/embeddings with it.", param="model"
        )


def _constraint(chat: ChatCompletionRequest, tools: ToolPlan, entry: ModelEntry) -> dict[str, Any] | None:
    """The one constraint on the answer: the tools' (a forced or generic call), else the
    response_format's, else the model's."""
    by_tools = tools.constraint()
    if by_tools is not None:
        return by_tools
    if chat.response_format is not None:
        return chat.response_format.constraint()
    if entry.output.grammar_schema is not None:
        return {"json_schema": entry.output.grammar_schema}
    return None


def _prefilled(messages: list[dict[str, Any]], constraint: dict[str, Any] | None) -> bool:
    """Whether the chat ends with an assistant's text to continue (Anthropic's prefill; llama-server
    and vLLM continue a final assistant message too): the answer is then only the continuation."""
    final = messages[-1] if messages else {}
    if final.get("role") != "assistant" or final.get("tool_calls") or not final.get("content"):
        return False
    if constraint is not None:  # the constraint would apply to the continuation as if it were the whole answer
        raise invalid_request(
            "A final assistant message (prefill) cannot be continued under a constraint on the answer "
            "(response_format, a forced or generic tool call, or the model's grammar); end the messages "
            "with a user message instead.",
            param="messages",
        )
    return True


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _sampling(request: GenerationRequest, entry: ModelEntry, delta_interval: float) -> dict[str, Any]:
    """Request fields over the model entry's `sampling` defaults."""
    defaults = entry.sampling
    return {
        "temperature": _pick(request.temperature, defaults.temperature),
        "top_p": _pick(request.top_p, defaults.top_p),
        "top_k": _pick(request.top_k, defaults.top_k),
        "min_p": _pick(request.min_p, defaults.min_p),
        "repeat_penalty": _pick(request.repeat_penalty, defaults.repeat_penalty),
        "presence_penalty": _pick(request.presence_penalty, defaults.presence_penalty),
        "frequency_penalty": _pick(request.frequency_penalty, defaults.frequency_penalty),
        "stop": request.stop_list,
        "seed": _pick(request.seed, defaults.seed),
        "logit_bias": request.logit_bias,
        # Nobody sees the pieces of a non-streamed answer: send them in one message at the end.
        "delta_interval": delta_interval if request.stream else math.inf,
    }
