"""Reasoning models' output: the thinking apart from the answer, as text streams in.

Each family marks its thinking its own way: `<think>…</think>` (Qwen3, DeepSeek-R1, GLM,
Phi-4-reasoning), `[THINK]…[/THINK]` (Magistral), `<think>…</think><response>…</response>` (Granite),
and gpt-oss's harmony channels (`analysis` thinks, `final` answers, `commentary` calls tools). A
`Splitter` takes the text in pieces cut anywhere (a marker split across tokens or stream chunks is
held back until it can be told) and gives ("reasoning" | "content", text) pieces. The worker runs
one to count thinking tokens and close the block when the budget is spent; the gateway runs one to
shape the answer. Pure: no I/O, imported by both sides.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the worker imports this module: keep pydantic out of it
    from gateway.config import ModelEntry

Kind = Literal["reasoning", "content"]
Piece = tuple[Kind, str]

# reasoning_effort → thinking budget in tokens where the template takes no effort of its own.
EFFORT_BUDGETS: dict[str, int | None] = {"minimal": 256, "low": 1024, "medium": 4096, "high": None}


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    start: str
    end: str
    close: str  # what the gateway writes into the sequence to end the thinking when its budget is spent
    answer_start: str = ""  # Granite wraps the answer too; these are dropped from it
    answer_end: str = ""


FORMATS: dict[str, ReasoningFormat] = {
    "think": ReasoningFormat("think", "<think>", "</think>", "\n</think>\n\n"),
    "magistral": ReasoningFormat("magistral", "[THINK]", "[/THINK]", "[/THINK]"),
    "granite": ReasoningFormat("granite", "<think>", "</think>", "</think><response>", "<response>", "</response>"),
    "harmony": ReasoningFormat(
        "harmony", "<|channel|>analysis<|message|>", "<|end|>", "<|end|><|start|>assistant<|channel|>final<|message|>"
    ),
}


def detect(template: str | None) -> str | None:
    """The reasoning format a chat template shows, or None for a model that does not reason."""
    if not template:
        return None
    if "<|channel|>" in template:
        return "harmony"
    if "[THINK]" in template:
        return "magistral"
    if "<think>" in template and "<response>" in template:
        return "granite"
    if "<think>" in template or "reasoning_content" in template:
        return "think"
    return None


def format_for(setting: str, template: str | None) -> str | None:
    """The format in effect: the configured one (`model.reasoning.format`), else the template's."""
    if setting == "none":
        return None
    return detect(template) if setting == "auto" else setting


def template_switch(template: str | None) -> str | None:
    """The template variable that turns thinking on and off, if it reads one (Qwen3's
    `enable_thinking`, Granite's `thinking`), not the word in its prose."""
    if not template:
        return None
    if re.search(r"\benable_thinking\b", template):
        return "enable_thinking"
    if re.search(r"\{%-?\s*(?:el)?if\s+(?:not\s+)?thinking\b|\bthinking\s+is\s+", template):
        return "thinking"
    return None


def template_takes_effort(template: str | None) -> bool:
    """gpt-oss's template reads `reasoning_effort` (low, medium, high) into its system message."""
    return bool(template and "reasoning_effort" in template)


def opens_block(fmt: ReasoningFormat, prompt_tail: str) -> bool:
    """Whether the rendered prompt leaves the model inside its thinking (DeepSeek-R1 and Qwen3's
    thinking templates end the generation prompt with `<think>\\n`)."""
    tail = prompt_tail.rstrip()
    return tail.endswith(fmt.start) or (fmt.name == "harmony" and tail.endswith("<|channel|>analysis<|message|>"))


def model_template(entry: ModelEntry, gguf_template: str | None) -> str | None:
    """The Jinja template the worker renders: the configured one, else the GGUF's (none for a named format)."""
    if entry.model.chat_template is not None:
        return entry.model.chat_template
    return None if entry.model.chat_format else gguf_template


def describe(entry: ModelEntry, gguf_template: str | None) -> dict[str, Any] | None:
    """A reasoning model's format and the controls it honours, for its model card (None: it does not reason)."""
    template = model_template(entry, gguf_template)
    fmt = format_for(entry.model.reasoning.format, template)
    if fmt is None:
        return None
    return {
        "format": fmt,
        "switch": template_switch(template),  # the template variable reasoning_effort "none" sets
        "effort": "template" if template_takes_effort(template) else "budget",
        "budget": entry.model.reasoning.budget,
    }


def _partial(text: str, marker: str) -> int:
    """How many of `text`'s last characters are the start of `marker` (0 when none)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class Splitter:
    """Thinking apart from the answer for the tag formats: an optional block at the start (opened
    by the model, or by the prompt: the caller feeds the start marker first), the answer after it.
    Whitespace around the markers is dropped; a block never closed leaves everything in reasoning."""

    def __init__(self, fmt: ReasoningFormat) -> None:
        self.fmt = fmt
        self.state: Literal["start", "reasoning", "answer"] = "start"
        self._held = ""
        self._lead = False  # whitespace at the start of the current part is dropped

    @property
    def thinking(self) -> bool:
        return self.state == "reasoning"

    @property
    def free(self) -> bool:
        """Whether the text now is no part of the answer, so that a constraint on the answer waits."""
        return self.thinking

    @property
    def overhead(self) -> bool:
        """Text held as the start of the opening marker: counted with the thinking it opens."""
        return self.state == "start" and bool(self._held.strip())

    def opening(self, piece: str) -> str | None:
        """Before the answer has begun (nothing but whitespace so far): the rest of the start
        marker when `piece` would open the block ("" when it holds the whole marker), else None."""
        if self.state != "start" or self._held.strip():
            return None
        text, start = (self._held + piece).lstrip(), self.fmt.start
        if text.startswith(start):
            return ""
        return start[len(text) :] if text and start.startswith(text) else None

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        buf = self._held + text
        self._held = ""
        fmt = self.fmt
        while True:
            if self.state == "start":
                stripped = buf.lstrip()
                if stripped.startswith(fmt.start):
                    self.state, buf, self._lead = "reasoning", stripped[len(fmt.start) :], True
                    continue
                if fmt.start.startswith(stripped):  # nothing yet, or part of the marker
                    self._held = buf
                    return out
                self.state, self._lead = "answer", True
                continue
            if self._lead:
                buf = buf.lstrip()
                if not buf:
                    return out
                self._lead = False
            if self.state == "reasoning":
                at = buf.find(fmt.end)
                if at >= 0:
                    if buf[:at].rstrip():
                        out.append(("reasoning", buf[:at].rstrip()))
                    self.state, buf, self._lead = "answer", buf[at + len(fmt.end) :], True
                    continue
                keep = _partial(buf, fmt.end)
                body = buf[: len(buf) - keep]
                said = body.rstrip()  # trailing whitespace waits: it may precede the end marker
                if said:
                    out.append(("reasoning", said))
                self._held = body[len(said) :] + buf[len(buf) - keep :]
                return out
            return out + self._answer(buf)

    def _answer(self, buf: str) -> list[Piece]:
        fmt = self.fmt
        for marker in (fmt.answer_start, fmt.answer_end):
            if marker:
                buf = buf.replace(marker, "")
        keep = max((_partial(buf, m) for m in (fmt.answer_start, fmt.answer_end) if m), default=0)
        self._held = buf[len(buf) - keep :] if keep else ""
        said = buf[: len(buf) - keep]
        return [("content", said)] if said else []

    def finish(self) -> list[Piece]:
        held, self._held = self._held, ""
        if self.state == "reasoning":
            return [("reasoning", held.rstrip())] if held.strip() else []
        if self.state == "start":
            return [("content", held)] if held.strip() else []
        return [("content", held)] if held else []


# gpt-oss's harmony markup: messages `<|start|>role<|channel|>name<|message|>text<|end|>`; the
# generation prompt ends with `<|start|>assistant`, so output begins at `<|channel|>`.
_HARMONY_MARKS = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>")


class HarmonySplitter:
    """gpt-oss's channels: `analysis` is reasoning, `final` the answer; a `commentary` message to
    `functions.x` (a tool call) becomes `<tool_call>{"name", "arguments"}</tool_call>` content for
    the tool parser when it ends; other commentary (a preamble) is content."""

    def __init__(self) -> None:
        self.fmt = FORMATS["harmony"]
        self.state: Literal["start", "reasoning", "answer"] = "start"
        self._held = ""
        self._header: str | None = ""  # the header being read; None inside a message body
        self._channel = ""
        self._recipient: str | None = None
        self._arguments = ""

    @property
    def thinking(self) -> bool:
        return self._header is None and self._channel == "analysis"

    @property
    def free(self) -> bool:
        """A message header or the analysis: the answer is the final channel's text (or a call's)."""
        return self._header is not None or self._channel == "analysis"

    @property
    def overhead(self) -> bool:
        """A message header: counted with the thinking (it is no part of the answer)."""
        return self._header is not None

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        buf = self._held + text
        self._held = ""
        while buf:
            found = [(buf.find(m), m) for m in _HARMONY_MARKS if m in buf]
            if not found:
                keep = max(_partial(buf, m) for m in _HARMONY_MARKS)
                self._text(buf[: len(buf) - keep], out)
                self._held = buf[len(buf) - keep :]
                break
            at, mark = min(found)
            self._text(buf[:at], out)
            self._mark(mark, out)
            buf = buf[at + len(mark) :]
        return out

    def _text(self, text: str, out: list[Piece]) -> None:
        if not text:
            return
        if self._header is not None:
            self._header += text
        elif self._recipient is not None:
            self._arguments += text
        else:
            self._emit(out, "reasoning" if self._channel == "analysis" else "content", text)

    def _emit(self, out: list[Piece], kind: Kind, text: str) -> None:
        self.state = "reasoning" if kind == "reasoning" else "answer"
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))

    def _mark(self, mark: str, out: list[Piece]) -> None:
        if mark == "<|start|>":
            self._header = ""
        elif mark in ("<|channel|>", "<|constrain|>") and self._header is not None:
            self._header += " " + mark + " "
        elif mark == "<|message|>" and self._header is not None:
            header, self._header = self._header, None
            channel = re.search(r"<\|channel\|>\s*(\w+)", header)
            self._channel = channel.group(1) if channel else "final"
            recipient = re.search(r"to=functions\.([\w.-]+)", header)
            self._recipient = recipient.group(1) if recipient else None
        else:  # <|end|>, <|return|>, <|call|>: the message is over
            self._end_call(out)
            if self._channel == "analysis":
                self.state = "answer"
            self._header, self._channel = "", ""

    def _end_call(self, out: list[Piece]) -> None:
        if self._recipient is None:
            return
        arguments = self._arguments.strip() or "{}"
        try:
            value: object = json.loads(arguments)
        except ValueError:
            value = arguments
        call = json.dumps({"name": self._recipient, "arguments": value}, ensure_ascii=False)
        self._emit(out, "content", f"<tool_call>{call}</tool_call>")
        self._recipient, self._arguments = None, ""

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        held, self._held = self._held, ""
        self._text(held, out)
        self._end_call(out)
        return out


def splitter(name: str) -> Splitter | HarmonySplitter:
    return HarmonySplitter() if name == "harmony" else Splitter(FORMATS[name])
