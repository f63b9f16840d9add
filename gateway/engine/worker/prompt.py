"""A request's prompt: the chat template (a named llama-cpp-python format, else the GGUF's own),
then the model's tokens. Runs in the worker process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from gateway.engine.base import GenerationParams
from gateway.engine.chatformats import spellings
from gateway.engine.worker.media import ImageSpan
from gateway.errors import invalid_request

Formatter = Callable[..., Any]
Tokenize = Callable[[str, bool, str], list[int]]  # text, add_bos, the request field it came from
# A prompt with images (media markers in the text, their pixels in order): tokens with placeholders, spans.
TokenizeImages = Callable[[str, bool, list[dict[str, Any]]], tuple[list[int], tuple[ImageSpan, ...]]]


class Rendered(NamedTuple):
    tokens: list[int]
    stops: list[str]  # the template's own stop strings
    images: tuple[ImageSpan, ...] = ()  # where the prompt's images are (media.py)


Render = Callable[[GenerationParams], Rendered]


def formatter(model: Any, chat_format: str | None, chat_template: str | None = None) -> Formatter | None:
    """`model`: llama-cpp-python's LlamaModel (metadata and special tokens); `chat_template`, when
    set, replaces the GGUF's own."""
    from llama_cpp import llama_chat_format

    if chat_format:
        for name in spellings(chat_format):
            candidate = getattr(llama_chat_format, f"format_{name}", None)
            if callable(candidate):
                return candidate  # type: ignore[no-any-return]
        raise ValueError(f"unknown chat_format '{chat_format}'")
    template = chat_template or model.metadata().get("tokenizer.chat_template")
    if not template:
        return None  # the gateway refuses chat requests for this model before they get here

    def token_text(token: int) -> str:
        return "" if token < 0 else bytes(model.detokenize([token], special=True)).decode("utf-8", errors="replace")

    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(model.token_eos()),
        bos_token=token_text(model.token_bos()),
        stop_token_ids=[model.token_eos()],
    )


def renderer(
    format_chat: Formatter | None, tokenize: Tokenize, tokenize_images: TokenizeImages | None = None
) -> Render:
    """The prompt's tokens and the template's own stop strings; errors here are the client's 400s.
    `tokenize_images`: the projector's tokenizer, where the model has one."""

    def render(params: GenerationParams) -> Rendered:
        if params.prompt is not None:
            return Rendered(tokenize(params.prompt, True, "prompt"), [])
        if format_chat is None:
            raise invalid_request("This model has no chat template; set model.chat_format in models.yaml.")
        try:
            rendered = format_chat(messages=params.messages, tools=params.tools, **(params.template_kwargs or {}))
        except Exception as exc:  # templates raise for message orders they do not support
            raise invalid_request(f"The model's chat template rejected the messages: {exc}", "messages") from None
        stop = rendered.stop
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        prompt = rendered.prompt
        if params.continue_final and params.messages:
            prompt = continued(prompt, str(params.messages[-1].get("content") or ""))
        add_bos = not rendered.added_special
        if params.images:
            if tokenize_images is None:
                raise invalid_request("This model cannot read images: it has no vision projector.", "messages")
            tokens, spans = tokenize_images(prompt, add_bos, params.images)
            return Rendered(tokens, stops, spans)
        return Rendered(tokenize(prompt, add_bos, "messages"), stops)

    return render


def continued(prompt: str, final: str) -> str:
    """The prompt cut right after the final assistant message's text, so that the model continues it
    instead of answering after it (what llama-server and vLLM's `continue_final_message` do): the
    template closes that turn and opens a new one after the text, and both are dropped."""
    for text in (final, final.rstrip()):  # some templates trim a message's text
        at = prompt.rfind(text) if text else -1
        if at >= 0:
            return prompt[: at + len(text)]
    raise invalid_request(
        "The model's chat template does not show the final assistant message as sent, so it cannot be "
        "continued; end the messages with a user message instead.",
        "messages",
    )
