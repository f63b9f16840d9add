"""A local model's entry: the GGUF file and how llama.cpp loads it, sampling defaults, runtime, output."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway import structured
from gateway.config.values import POOL_NAME, ByteSize, CacheType, Duration, Placement, Section
from gateway.errors import GatewayError


class ReasoningSection(Section):
    """How a reasoning model's thinking is told apart from its answer, and how long it may think."""

    format: Literal["auto", "think", "magistral", "granite", "harmony", "none"] = Field(
        "auto",
        description="auto: detected from the chat template; think: <think>…</think> (Qwen3, DeepSeek-R1, GLM, "
        "Phi-4-reasoning); magistral: [THINK]…[/THINK]; granite: <think>/<response>; harmony: gpt-oss channels; "
        "none: not a reasoning model",
    )
    budget: int | None = Field(
        None,
        ge=0,
        description="thinking tokens before the gateway closes the block; default: what leaves the answer a "
        "quarter of max_tokens (at least 16, at most half)",
    )


class NgramSection(Section):
    """Prompt lookup: the draft is what followed the latest earlier occurrence of the sequence's last
    n tokens in its own prompt and output (edits, refactors and quoting answers repeat long spans)."""

    min: int = Field(2, ge=1, le=16, description="shortest n-gram (last tokens) looked up")
    max: int = Field(
        8,
        ge=1,
        le=16,
        description="longest n-gram looked up; the longest that matches wins (structured text repeats short ones)",
    )
    lookahead: int = Field(16, ge=1, le=64, description="most tokens drafted per step")

    @model_validator(mode="after")
    def _ordered(self) -> NgramSection:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class DraftSection(Section):
    """A smaller model with the target's vocabulary, run greedily in the same worker to draft tokens."""

    path: Path = Field(description="the draft model's GGUF file, relative to the configuration file")
    n_gpu_layers: int = Field(0, ge=-1, description="-1 offloads all its layers, 0 none, N that many")
    max_tokens: int = Field(8, ge=1, le=64, description="most tokens drafted per step")


class SpeculativeSection(Section):
    """Speculative decoding: drafted tokens are verified in the batch's decode, and kept while the
    target samples them. Output is the target's: with greedy sampling token for token the same."""

    ngram: NgramSection | None = Field(None, description="drafts from the sequence's own prompt and output")
    draft: DraftSection | None = Field(
        None, description="drafts from a draft model (when the n-gram lookup finds none, if both are set)"
    )


def check_template(text: str) -> str:
    """A Jinja chat template must at least parse (the worker renders it with llama-cpp-python)."""
    import jinja2
    import jinja2.ext

    class _Generation(jinja2.ext.Extension):  # Transformers' {% generation %} tag, as the worker allows it
        tags = {"generation"}

        def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    try:
        jinja2.Environment(extensions=[_Generation, jinja2.ext.loopcontrols]).parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"the chat template does not parse: {exc.message} (line {exc.lineno})") from None
    return text


def sample_render_error(text: str) -> str | None:
    """Why the template fails to render a one-message chat (`gateway check`), or None."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    try:
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(text).render(
            messages=[{"role": "user", "content": "Hello"}], add_generation_prompt=True, bos_token="",
            eos_token="", raise_exception=raise_exception, tools=None,
        )  # fmt: skip
    except Exception as exc:  # a template may fail any way Jinja can
        return f"{type(exc).__name__}: {exc}"
    return None


class ModelSection(Section):
    """How llama.cpp loads the file."""

    path: Path = Field(description="GGUF file, relative to the configuration file")
    n_ctx: int = Field(2048, ge=16, description="context window in tokens")
    n_gpu_layers: int = Field(0, ge=-1, description="-1 offloads all layers, 0 none, N that many")
    n_batch: int = Field(512, ge=1, description="prompt-processing batch size")
    chat_format: str | None = Field(
        None, description="llama-cpp-python chat format name; default: the GGUF's tokenizer.chat_template"
    )
    chat_template: str | None = Field(None, description="a Jinja chat template to use instead of the GGUF's (inline)")
    chat_template_file: Path | None = Field(
        None, description="a file holding the Jinja chat template, relative to the configuration file"
    )
    reasoning: ReasoningSection = ReasoningSection()
    mmproj: Path | None = Field(
        None,
        description="a vision projector GGUF for this model (libmtmd's mmproj), relative to the configuration "
        "file: the model then reads images",
    )
    image_cache: ByteSize = Field(
        64 * 2**20,
        description="with mmproj: bytes of encoded images the worker keeps, so that a second request with the same "
        "image skips the encoder (counted in the memory estimate); 0 keeps none",
    )
    use_mmap: bool = True
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto",
        description="flash attention: auto lets llama.cpp decide per device (on where supported); on; off",
    )
    cache_type_k: CacheType = Field(
        "f16", description="KV cache type of the keys: f16; q8_0 about half the memory; q4_0 about a quarter"
    )
    cache_type_v: CacheType = Field(
        "f16", description="KV cache type of the values: f16, q8_0, q4_0; quantized needs flash attention (not off)"
    )
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="embedding models: how token vectors become one; default: the GGUF's own"
    )
    devices: list[str] | None = Field(
        None, description="GPUs this model may use (cuda0, cuda1, ... or GPU UUIDs); default: any"
    )
    main_gpu: int | None = Field(None, ge=0, description="the GPU (cudaN) to use first when the model fits on one")
    tensor_split: list[float] | None = Field(
        None,
        min_length=1,
        description="share of the offloaded layers per GPU (in `devices` order, else cuda0, cuda1...): always spread",
    )
    placement: Placement | None = Field(
        None, description="pack: one GPU when it fits; spread: across all GPUs; default gateway.placement"
    )
    speculative: SpeculativeSection | None = Field(
        None, description="speculative decoding: n-gram (prompt lookup) and/or draft-model drafts; default none"
    )

    @field_validator("flash_attn", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object) -> object:
        """YAML 1.1 reads a bare `on`/`off` as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("chat_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)

    @model_validator(mode="after")
    def _quantized_v_has_flash_attention(self) -> ModelSection:
        if self.cache_type_v != "f16" and self.flash_attn == "off":
            # llama.cpp refuses such a context ("quantized V cache requires flash_attn to be enabled").
            raise ValueError(
                f"cache_type_v {self.cache_type_v} needs flash attention, but flash_attn is off: "
                "set flash_attn to auto (llama.cpp then turns it on) or on, or cache_type_v to f16"
            )
        return self

    @model_validator(mode="after")
    def _placement_is_consistent(self) -> ModelSection:
        if sum(x is not None for x in (self.chat_format, self.chat_template, self.chat_template_file)) > 1:
            raise ValueError("set one of chat_format, chat_template and chat_template_file")
        if self.devices is not None:
            bad = [d for d in self.devices if d in ("host", "gpu") or not POOL_NAME.match(d)]
            if bad or not self.devices:
                raise ValueError(f"devices: {bad or '[]'}: name GPUs as cuda0, cuda1, ... or by UUID")
        if self.tensor_split is not None:
            if any(share < 0 for share in self.tensor_split) or sum(self.tensor_split) <= 0:
                raise ValueError("tensor_split: shares must be >= 0 and not all 0")
            if self.devices is not None and len(self.devices) != len(self.tensor_split):
                raise ValueError("tensor_split: give one share per entry of devices")
        return self


class SamplingSection(Section):
    """Defaults for requests that do not set these fields."""

    temperature: float = Field(0.8, ge=0, le=2)
    top_p: float = Field(0.95, ge=0, le=1)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0, le=1)
    repeat_penalty: float = Field(1.0, ge=0)
    repeat_last_n: int = Field(64, ge=0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = None


class RuntimeSection(Section):
    thread_count: int | None = Field(None, ge=1, description="threads for generation; default: half the cores")
    parallel: int = Field(
        1, ge=1, le=64, description="requests decoded together (continuous batching); the KV cache holds n_ctx for each"
    )
    verbose: bool = False


class OutputSection(Section):
    max_tokens: int | None = Field(
        None, ge=1, description="default completion length; default: until the context is full"
    )
    grammar_schema: dict[str, Any] | None = Field(
        None, description="JSON schema every answer must follow unless the request sets response_format"
    )

    @field_validator("grammar_schema")
    @classmethod
    def _enforceable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                structured.check(value, "grammar_schema")
            except GatewayError as exc:
                raise ValueError(exc.message) from None
        return value


class ModelEntry(Section):
    """One model clients can name in `model`."""

    aliases: list[str] = Field(default_factory=list)
    pinned: bool = Field(False, description="loaded at start and never evicted")
    ttl: Duration | None = Field(None, description="idle time before unloading; absent: until evicted")
    max_queue: int | None = Field(
        None, ge=1, description="requests running or waiting for this model; default gateway.max_queue"
    )
    embedding: bool = Field(False, description="serve /v1/embeddings (and nothing else) with this model")
    model: ModelSection
    sampling: SamplingSection = SamplingSection()
    runtime: RuntimeSection = RuntimeSection()
    output: OutputSection = OutputSection()

    @property
    def flash_attention(self) -> Literal["auto", "on", "off"]:
        """What the worker runs: an embedding worker (llama-cpp-python's `Llama`, which has no "auto")
        runs without flash attention unless it is `on`, or "auto" with a quantized V cache, which
        llama.cpp's auto turns flash attention on for (it refuses such a cache without it)."""
        if self.embedding and self.model.flash_attn == "auto":
            return "on" if self.model.cache_type_v != "f16" else "off"
        return self.model.flash_attn
