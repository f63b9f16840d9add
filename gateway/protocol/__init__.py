"""OpenAI request bodies → validated, immutable requests (OpenAI's answers are built in replies.py).
Pure: no I/O. Every bad field is a 400 that names it (`messages[0].content`).
"""

from gateway.protocol.extras import (
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    check_vocabulary,
    parse_detokenize_request,
    parse_embedding_request,
    parse_tokenize_request,
)
from gateway.protocol.generation import (
    MAX_CHOICES,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    parse_chat_request,
    parse_completion_request,
)
from gateway.protocol.parts import Message, ResponseFormat, Tool

__all__ = [
    "MAX_CHOICES",
    "ChatCompletionRequest",
    "CompletionRequest",
    "DetokenizeRequest",
    "EmbeddingRequest",
    "GenerationRequest",
    "Message",
    "ResponseFormat",
    "TokenizeRequest",
    "Tool",
    "check_vocabulary",
    "parse_chat_request",
    "parse_completion_request",
    "parse_detokenize_request",
    "parse_embedding_request",
    "parse_tokenize_request",
]
