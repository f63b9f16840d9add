"""Explicit limits on what a request may contain (docs/api.md's "Limits" table lists them).

Each one bounds work that would otherwise grow with a hostile input, or mirrors OpenAI's own limit.
Everything past a limit is a 400 `invalid_request_error` naming the parameter, decided before a
model is held. The body as a whole is bounded by `gateway.max_body_bytes` (413).
"""

from __future__ import annotations

MAX_JSON_DEPTH = 64  # objects and arrays inside each other; the deepest real use is a tool's JSON schema
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # every integer in a body (OpenAI's own range for seed)
MAX_MODEL_NAME_CHARS = 256
MAX_USER_CHARS = 256
MAX_MESSAGES = 4096
MAX_NAME_CHARS = 256  # message `name`, tool call ids
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256  # matching costs up to the square of a stop's length per token
MAX_TOOLS = 128  # OpenAI's limit
MAX_TOOL_NAME_CHARS = 64  # OpenAI's pattern: ^[a-zA-Z0-9_-]{1,64}$
MAX_TOOL_DESCRIPTION_CHARS = 8192
MAX_LOGIT_BIAS = 1024  # entries; each token id must be in the model's vocabulary
MAX_TOKEN_ID = 2**31 - 1  # llama.cpp token ids are int32; the vocabulary check comes on top
MAX_PROMPTS = 64  # /v1/completions prompts in one request (each is generated in turn)
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit
MAX_TOKENIZE_BYTES = 1 << 20  # /extras/tokenize text, UTF-8 bytes
