"""Requests beside generation: tokenize, detokenize, embeddings; token ids against a vocabulary."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from gateway.errors import invalid_request
from gateway.protocol import limits
from gateway.protocol.validation import Strict, load_json, validate


class TokenizeRequest(Strict):
    model: str = Field(min_length=1, max_length=limits.MAX_MODEL_NAME_CHARS)
    input: str

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str) -> str:
        if len(value) > limits.MAX_TOKENIZE_BYTES or len(value.encode("utf-8")) > limits.MAX_TOKENIZE_BYTES:
            raise ValueError(f"at most {limits.MAX_TOKENIZE_BYTES} bytes of UTF-8 text can be tokenized at once")
        return value


class DetokenizeRequest(Strict):
    model: str = Field(min_length=1, max_length=limits.MAX_MODEL_NAME_CHARS)
    tokens: list[Annotated[int, Field(ge=0, le=limits.MAX_TOKEN_ID)]]


def parse_tokenize_request(body: bytes) -> TokenizeRequest:
    return validate(TokenizeRequest, load_json(body))


def parse_detokenize_request(body: bytes) -> DetokenizeRequest:
    return validate(DetokenizeRequest, load_json(body))


def check_vocabulary(token_ids: list[int], n_vocab: int, param: str) -> None:
    """Token ids a request names must exist in the model's vocabulary (0 when the GGUF does not say:
    the worker checks again against the loaded model either way)."""
    if n_vocab <= 0 or not token_ids:
        return
    bad = max(token_ids)
    if bad >= n_vocab:
        raise invalid_request(f"Token id {bad} is outside this model's vocabulary (0..{n_vocab - 1}).", param=param)


MAX_EMBEDDING_INPUTS = limits.MAX_EMBEDDING_INPUTS
TokenId = Annotated[int, Field(ge=0, le=limits.MAX_TOKEN_ID)]


class EmbeddingRequest(Strict):
    model: str = Field(min_length=1, max_length=limits.MAX_MODEL_NAME_CHARS)
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)
        ]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: Annotated[str, Field(max_length=limits.MAX_USER_CHARS)] | None = None

    @property
    def inputs(self) -> list[str | list[int]]:
        """Each input to embed: a text, or a list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        items: list[Any] = list(self.input)
        if all(isinstance(item, int) for item in items):
            return [items]  # one token array
        return items

    def token_ids(self) -> list[int]:
        return [t for item in self.inputs if isinstance(item, list) for t in item]


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    data = load_json(body)
    if data.get("input") == "" or (isinstance(data.get("input"), list) and "" in data["input"]):
        raise invalid_request("'input' cannot contain empty strings.", param="input")
    return validate(EmbeddingRequest, data)
