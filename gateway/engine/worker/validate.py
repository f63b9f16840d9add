"""A `Generate` checked against the loaded model: everything that can be the client's fault (the
prompt and its images fit the context, the grammar compiles, the logit bias names real tokens) is
decided here, before `Started` and so before the HTTP 200; what passes becomes a batch `Request`."""

from __future__ import annotations

from gateway.engine.base import GenerationParams
from gateway.engine.reasoning import FORMATS, opens_block
from gateway.engine.worker.backend import Backend, SamplerSettings
from gateway.engine.worker.media import check_images, text_tokens
from gateway.engine.worker.prompt import Render
from gateway.engine.worker.sampling import logit_bias
from gateway.engine.worker.sequences import Request, Thinking, answer_reserve
from gateway.errors import context_length_exceeded


class Validator:
    def __init__(self, backend: Backend, render: Render, repeat_last_n: int) -> None:
        self._backend = backend
        self._render = render
        self._repeat_last_n = repeat_last_n

    def __call__(self, request_id: int, params: GenerationParams) -> Request:
        """Everything that can be the client's fault, decided before `Started` (and the HTTP 200)."""
        backend = self._backend
        prompt, template_stops, images = self._render(params)
        room = (backend.n_ctx - len(prompt)) // params.n
        if room <= 0:
            raise context_length_exceeded(len(prompt), backend.n_ctx, "messages" if params.prompt is None else "prompt")
        check_images(images, len(prompt), backend.n_batch)
        settings = SamplerSettings(
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p,
            repeat_penalty=params.repeat_penalty,
            repeat_last_n=self._repeat_last_n,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            logit_bias=logit_bias(params.logit_bias, backend.n_vocab),
            grammar=backend.grammar(params.constraint),
        )
        limit = min(params.max_tokens, room) if params.max_tokens else room
        return Request(
            request_id=request_id,
            prompt=prompt,
            n=params.n,
            limit=limit,
            settings=settings,
            seed=params.seed,
            stops=[*params.stop, *template_stops],
            delta_interval=params.delta_interval,
            top_logprobs=params.top_logprobs if params.logprobs else None,
            thinking=self._thinking(params, prompt, limit),
            images=images,
        )

    def _thinking(self, params: GenerationParams, prompt: list[int], limit: int) -> Thinking | None:
        """What the worker follows of a reasoning model's thinking (a chat only: a raw prompt is the
        caller's). With no budget set, the thinking leaves the answer its reserve of `limit`."""
        spec = params.reasoning
        if spec is None or params.prompt is not None:
            return None
        fmt = FORMATS[spec["format"]]
        opened = opens_block(fmt, self._backend.detokenize(text_tokens(prompt[-16:])))
        close = tuple(self._backend.tokenize(fmt.close, False))
        budget = spec.get("budget")
        return Thinking(fmt.name, limit - answer_reserve(limit) if budget is None else budget, opened, close)
