"""An answer, in no API's shape: the chunks a streamed one is made of, and the choices a non-streamed
one folds them into. `serving` produces both; each API renders them in its own shape (`replies` for
OpenAI's, the dialects for theirs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Logprobs = list[dict[str, Any]]  # per token: token, logprob, bytes, top_logprobs


@dataclass(frozen=True)
class Opened:
    """Choice `index` begins: with a tool call (OpenAI opens one with `content: null`) or with text."""

    index: int
    tool_call: bool


@dataclass(frozen=True)
class Text:
    index: int
    text: str
    logprobs: Logprobs | None = None


@dataclass(frozen=True)
class Reasoning:
    """A piece of a reasoning model's thinking, apart from the answer's text (it comes first)."""

    index: int
    text: str


@dataclass(frozen=True)
class ToolDelta:
    """A piece of a tool call, as OpenAI streams it: its opening (`index`, `id`, `type`,
    `function.name`) or a fragment of its arguments (`index`, `function.arguments`)."""

    index: int  # the choice's
    delta: dict[str, Any]


@dataclass(frozen=True)
class Ended:
    index: int
    finish_reason: str  # as clients see it: stop, length, tool_calls
    stop_sequence: str | None = None  # the stop string that ended it, if one did


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0  # of completion_tokens, those spent thinking
    cached_tokens: int = 0  # of prompt_tokens, those read from a cached prefix's cells

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


Chunk = Opened | Text | Reasoning | ToolDelta | Ended | Usage


@dataclass(frozen=True)
class Choice:
    """One finished choice: its text (None when it called tools, or said nothing after its thinking),
    how it ended, log probabilities when asked for, its tool calls, the stop string that ended it
    (Anthropic's `stop_sequence`), and its thinking."""

    text: str | None
    finish_reason: str
    logprobs: Logprobs | None = None
    tool_calls: list[dict[str, Any]] | None = None
    stop_sequence: str | None = None
    reasoning: str | None = None  # a reasoning model's thinking, None when it had none


@dataclass(frozen=True)
class Answer:
    """A finished non-streamed answer."""

    model: str
    choices: list[Choice]
    usage: Usage
