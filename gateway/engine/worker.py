"""The worker process: owns one `llama_cpp.Llama` and runs one generation at a time.

Started with the `spawn` method by `engine/process.py`. Protocol over the pipe (tuples):

parent → worker: ("load", config) first, then ("generate", id, params) | ("cancel", id)
                 | ("embed", id, inputs) | ("call", id, op, argument) | ("shutdown",)
worker → parent: ("loaded", info) | ("load_failed", reason, memory)   (memory: loadlog.LoadReport wire form,
                 also in info["memory"]: bytes llama.cpp allocated per device)
                 ("started", id, prompt_tokens) | ("delta", id, text)
                 ("finished", id, finish_reason, prompt_tokens, completion_tokens) | ("error", id, error)
                 ("result", id, value)   (answer to embed, or to a call: tokenize, detokenize)

A worker imports llama_cpp as soon as it starts and then waits for its model, so a spare one can be
started ahead of need. A reader thread takes commands so that a cancel reaches the generation loop
between two tokens. The worker exits when its parent goes away (the pipe reaches EOF).
"""

from __future__ import annotations

import codecs
import os
import queue
import random
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gateway.engine import single
from gateway.engine.base import GenerationParams
from gateway.engine.constraint import Constraints
from gateway.engine.deltas import DeltaBatcher
from gateway.engine.embedding import POOLING, embed
from gateway.engine.guard import Tokenizer, fresh_prompt, nonempty_prompt, sampler_seed, tokenize
from gateway.engine.loadlog import LogCapture, failure_message
from gateway.engine.parallel import Parallel
from gateway.engine.sampling import LogprobScorer, logit_bias_processor, make_sampler
from gateway.engine.stops import StopMatcher
from gateway.errors import GatewayError, context_length_exceeded, internal_error, invalid_request

Send = Callable[[tuple[Any, ...]], None]
Formatter = Callable[..., Any]


def main(conn: Connection, env: dict[str, str] | None = None) -> None:
    """Entry point of the worker process. `env` (e.g. CUDA_VISIBLE_DEVICES) is set before llama.cpp
    starts, so the worker sees only the devices it was given."""
    os.environ.update(env or {})
    import llama_cpp  # noqa: F401  (the slow part of a cold start, done before a model is asked for)

    try:
        message = conn.recv()
    except (EOFError, OSError):
        return
    if message[0] != "load":
        return
    capture = LogCapture(echo=bool(message[1].get("verbose")))
    capture.install()  # per-device buffer sizes and allocation failures, from llama.cpp's own log
    try:
        llm, formatter = _load(message[1])
    except Exception as exc:  # anything llama.cpp raises is a load failure to report, not a crash
        report = capture.report()
        conn.send(("load_failed", failure_message(exc, report, list(capture.errors)), report.to_wire()))
        return
    conn.send(("loaded", {"n_ctx": llm.n_ctx(), "pid": os.getpid(), "memory": capture.report().to_wire()}))

    jobs: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()
    cancelled: set[int] = set()
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:  # both threads answer on the one pipe
            conn.send(message)

    threading.Thread(target=_read_commands, args=(conn, send, jobs, cancelled, llm), daemon=True).start()
    parallel = Parallel(llm)
    tokenizer = Tokenizer(llm)
    constraints = Constraints(llm._model.vocab)
    while True:
        kind, request_id, payload = jobs.get()
        try:
            if kind == "embed":
                send(("result", request_id, embed(llm, payload, tokenizer)))
            else:
                params = GenerationParams.from_wire(payload)
                _generate(llm, formatter, tokenizer, request_id, params, send, cancelled, parallel, constraints)
        except GatewayError as exc:
            send(("error", request_id, exc.to_wire()))
        except (BrokenPipeError, EOFError):
            os._exit(0)
        except Exception as exc:
            send(("error", request_id, internal_error(f"{type(exc).__name__}: {exc}").to_wire()))
        cancelled.discard(request_id)


def backend_info() -> dict[str, Any]:
    """What this llama.cpp build can run on (for `gateway check`); imports llama_cpp here, in the caller."""
    import llama_cpp

    system = llama_cpp.llama_print_system_info()
    text = system.decode("utf-8", errors="replace") if isinstance(system, bytes) else str(system)
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    upper = text.upper()
    name = next((b for b in ("CUDA", "Metal", "Vulkan", "ROCm", "SYCL") if b.upper() in upper), "CPU")
    return {"backend": name if gpu else "CPU", "gpu_offload": gpu, "system_info": text.strip()}


def _read_commands(
    conn: Connection, send: Send, jobs: queue.SimpleQueue[tuple[str, int, Any]], cancelled: set[int], llm: Any
) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the gateway is gone: nobody will read what we produce
        kind = message[0]
        if kind in ("generate", "embed"):
            jobs.put((kind, message[1], message[2]))
        elif kind == "cancel":
            cancelled.add(message[1])
        elif kind == "call":
            # Tokenizing reads only the vocabulary: answered here, not queued behind generations.
            _, call_id, op, argument = message
            try:
                send(("result", call_id, _call(llm, op, argument)))
            except (BrokenPipeError, EOFError):
                os._exit(0)
            except Exception as exc:
                send(("error", call_id, invalid_request(f"{op} failed: {exc}", "tokens").to_wire()))
        elif kind == "shutdown":
            # Unloading means returning the memory now; the OS reclaims everything at exit.
            os._exit(0)


def _call(llm: Any, op: str, argument: Any) -> Any:
    if op == "tokenize":  # the gateway bounds the text's length (limits.MAX_TOKENIZE_BYTES)
        return tokenize(llm, str(argument).encode("utf-8"), add_bos=False, special=True)
    if op == "detokenize":
        n_vocab = llm.n_vocab()
        bad = [t for t in argument if not isinstance(t, int) or not 0 <= t < n_vocab]
        if bad:
            raise ValueError(f"token ids out of range 0..{n_vocab - 1}: {bad[:5]}")
        return llm.detokenize(list(argument), special=True).decode("utf-8", errors="replace")
    raise ValueError(f"unknown call {op!r}")


def _load(config: dict[str, Any]) -> tuple[Any, Formatter | None]:
    import llama_cpp

    embedding = config["embedding"]
    options: dict[str, Any] = {"n_batch": min(config["n_batch"], config["n_ctx"])}
    if embedding:
        # An input is embedded in one batch, so a batch holds a whole context; pooling gives one vector.
        options = {"embedding": True, "n_batch": config["n_ctx"], "n_ubatch": config["n_ctx"]}
        options["pooling_type"] = POOLING.get(config["pooling"] or "", llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED)
    # Where the layers go: set by the gateway's placement (devices numbered as this worker sees them).
    options.update(config.get("placement") or {"n_gpu_layers": config["n_gpu_layers"]})
    llm = llama_cpp.Llama(
        model_path=config["path"],
        n_ctx=config["n_ctx"],
        n_threads=config["n_threads"],
        use_mmap=config["use_mmap"],
        last_n_tokens_size=config["repeat_last_n"],
        verbose=config["verbose"],
        **options,
    )
    if embedding and int(llm.pooling_type()) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
        raise ValueError("this model pools no embedding; set model.pooling (mean, cls or last) in models.yaml")
    return llm, None if embedding else _formatter(llm, config["chat_format"])


def _formatter(llm: Any, chat_format: str | None) -> Formatter | None:
    """The chat formatter: a named llama-cpp-python format, else the GGUF's own template."""
    from llama_cpp import llama_chat_format

    if chat_format:
        for name in (chat_format, chat_format.replace("-", "_"), chat_format.replace("-", "")):
            candidate = getattr(llama_chat_format, f"format_{name}", None)
            if callable(candidate):
                return candidate  # type: ignore[no-any-return]
        raise ValueError(f"unknown chat_format '{chat_format}'")
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None  # the gateway refuses chat requests for this model before they get here

    def token_text(token: int) -> str:
        return "" if token < 0 else llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(llm.token_eos()),
        bos_token=token_text(llm.token_bos()),
        stop_token_ids=[llm.token_eos()],
    )


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


class ChoiceOutput:
    """Turns one sequence's tokens into deltas for choice `index`: stop sequences, UTF-8 pieces split
    across tokens, coalescing, log probabilities, and the length limit."""

    def __init__(
        self,
        llm: Any,
        request_id: int,
        index: int,
        stops: list[str],
        limit: int,
        params: GenerationParams,
        send: Send,
    ) -> None:
        import llama_cpp

        self._llm = llm
        self._vocab = llm._model.vocab
        self._vocab_is_eog = llama_cpp.llama_vocab_is_eog
        self._matcher = StopMatcher(stops)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._batcher = DeltaBatcher(
            lambda text, entries: send(("delta", request_id, text, entries, index)), params.delta_interval
        )
        self._scorer = LogprobScorer(llm, params.top_logprobs) if params.logprobs else None
        self._limit = limit
        self.produced = 0
        self.finish_reason = "length"
        self._matched_stop = False

    def token(self, token: int, ctx: Any = None, idx: int = -1) -> bool:
        """Take one sampled token (its logits at `ctx`/`idx`); True when this choice is finished."""
        if self._vocab_is_eog(self._vocab, token):
            self.finish_reason = "stop"
            return True
        self.produced += 1
        piece = self._llm.detokenize([token])
        text, hit_stop = self._matcher.feed(self._decoder.decode(piece))
        self._batcher.add(text, [self._scorer.entry(token, piece, ctx, idx)] if self._scorer else None)
        if hit_stop:
            self.finish_reason, self._matched_stop = "stop", True
            return True
        return self.produced >= self._limit

    def close(self, cancelled: bool) -> None:
        if cancelled:
            self.finish_reason = "cancelled"
            return
        if not self._matched_stop:
            # Text held back as a possible stop-sequence start turned out not to be one.
            self._batcher.add(self._matcher.feed(self._decoder.decode(b"", final=True))[0] + self._matcher.flush())
        self._batcher.flush()


def _prompt(
    llm: Any, formatter: Formatter | None, tokenizer: Tokenizer, params: GenerationParams
) -> tuple[list[int], list[str]]:
    """The prompt's tokens and the template's own stop strings; errors here are the client's 400s."""
    n_ctx = llm.n_ctx()
    if params.prompt is not None:
        tokens = tokenizer.tokens(params.prompt, add_bos=True, special=True, limit=n_ctx, param="prompt")
        return nonempty_prompt(llm, tokens, "prompt"), []
    if formatter is None:
        raise invalid_request("This model has no chat template; set model.chat_format in models.yaml.")
    try:
        rendered = formatter(messages=params.messages, tools=params.tools)
    except Exception as exc:  # templates raise for message orders they do not support
        raise invalid_request(f"The model's chat template rejected the messages: {exc}", "messages") from None
    tokens = tokenizer.tokens(
        rendered.prompt, add_bos=not rendered.added_special, special=True, limit=n_ctx, param="messages"
    )
    return nonempty_prompt(llm, tokens, "messages"), _stops(rendered.stop)


def _generate(
    llm: Any,
    formatter: Formatter | None,
    tokenizer: Tokenizer,
    request_id: int,
    params: GenerationParams,
    send: Send,
    cancelled: set[int],
    parallel: Parallel,
    constraints: Constraints,
) -> None:
    if request_id in cancelled:
        send(("finished", request_id, "cancelled", 0, 0))
        return
    prompt, template_stops = _prompt(llm, formatter, tokenizer, params)
    n_ctx = llm.n_ctx()
    room = (n_ctx - len(prompt)) // params.n
    if room <= 0:
        raise context_length_exceeded(len(prompt), n_ctx, "messages" if params.prompt is None else "prompt")
    limit = min(params.max_tokens, room) if params.max_tokens else room
    grammar = constraints.compile(params.constraint)
    bias = logit_bias_processor(llm, params.logit_bias)
    stops = [*params.stop, *template_stops]
    outputs = [ChoiceOutput(llm, request_id, i, stops, limit, params, send) for i in range(params.n)]
    send(("started", request_id, len(prompt)))
    seed = sampler_seed(params.seed) if params.seed is not None else random.randrange(2**31)
    sampling = {
        "top_k": params.top_k,
        "top_p": params.top_p,
        "min_p": params.min_p,
        "temp": params.temperature,
        "repeat_penalty": params.repeat_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "logits_processor": bias,
    }
    # Choice i samples with seed + i, each under its own matcher of the shared grammar.
    samplers = [make_sampler(llm, sampler_seed(seed + i), sampling, grammar) for i in range(params.n)]
    if params.n > 1:
        parallel.run(prompt, outputs, samplers, lambda: request_id in cancelled)
        cancelled_now = request_id in cancelled
        for index, output in enumerate(outputs):
            output.close(cancelled_now)
            send(("choice_finished", request_id, index, output.finish_reason, output.produced))
        total = sum(o.produced for o in outputs)
        send(("finished", request_id, "cancelled" if cancelled_now else "stop", len(prompt), total))
        return
    (output,) = outputs
    if params.seed is not None:
        fresh_prompt(llm)
    was_cancelled = single.decode(llm, prompt, samplers[0], output.token, lambda: request_id in cancelled)
    output.close(was_cancelled)
    send(("finished", request_id, output.finish_reason, len(prompt), output.produced))
