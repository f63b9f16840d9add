"""One stored prefix as a file: a header holding the full key and the exact tokens, then llama.cpp's
state of the sequence that holds them (llama_state_seq_get_data), each part under its own sha256.

    magic (8) | key length u32 | key | tokens length u32 | tokens | payload length u64
    | payload sha256 (32) | header sha256 (32, of all the bytes before it) | payload

Little-endian; the tokens as a JSON array of integers (an image's positions hold placeholder ids far
beyond 64 bits: engine/worker/media.py). A file is used only when its header digest holds, its key
equals the loader's byte for byte, its length is the header's plus the payload's and the payload's
digest holds; anything else is `Corrupt` (the caller deletes it) or `Mismatch` (another key: never
read further).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"GWKVPFX\x01"
MAX_KEY = 1 << 16
MAX_TOKENS = 1 << 28  # bytes of tokens, far beyond any context: more is a damaged header, not an allocation


class Corrupt(Exception):
    """Truncated, damaged or not a prefix file at all."""


class Mismatch(Exception):
    """A sound file of another key (another model file or settings)."""


@dataclass(frozen=True)
class Header:
    tokens: tuple[int, ...]
    payload_length: int
    payload_sha256: bytes
    offset: int  # where the payload starts

    @property
    def size(self) -> int:
        return self.offset + self.payload_length


def token_bytes(tokens: Sequence[int]) -> bytes:
    return json.dumps(list(tokens), separators=(",", ":")).encode()


def encode(key: bytes, tokens: Sequence[int], payload: bytes) -> bytes:
    """The header of a file holding `payload` for `tokens` under `key` (the payload follows it)."""
    encoded = token_bytes(tokens)
    head = b"".join(
        (
            MAGIC,
            struct.pack("<I", len(key)),
            key,
            struct.pack("<I", len(encoded)),
            encoded,
            struct.pack("<Q", len(payload)),
            hashlib.sha256(payload).digest(),
        )
    )
    return head + hashlib.sha256(head).digest()


def read_header(file: BinaryIO, key: bytes, file_size: int) -> Header:
    """The header of an open file, checked against `key` and the file's size."""
    digest = hashlib.sha256()

    def take(n: int) -> bytes:
        data = file.read(n)
        if len(data) != n:
            raise Corrupt("truncated header")
        digest.update(data)
        return data

    if take(len(MAGIC)) != MAGIC:
        raise Corrupt("not a prefix file")
    (key_length,) = struct.unpack("<I", take(4))
    if key_length > MAX_KEY:
        raise Corrupt("damaged key length")
    stored_key = take(key_length)
    (length,) = struct.unpack("<I", take(4))
    if length > MAX_TOKENS:
        raise Corrupt("damaged token length")
    encoded = take(length)
    (payload_length,) = struct.unpack("<Q", take(8))
    payload_sha = take(32)
    expected = digest.digest()
    stored = file.read(32)
    if stored != expected:
        raise Corrupt("header digest does not match")
    try:
        tokens = json.loads(encoded)
    except ValueError:
        raise Corrupt("tokens are not JSON") from None
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise Corrupt("tokens are not a list of integers")
    offset = file.tell()
    if offset + payload_length != file_size:
        raise Corrupt(f"{file_size} bytes, the header says {offset + payload_length}")
    if stored_key != key:  # sound, but another load's: byte for byte or not at all
        raise Mismatch("the key differs")
    return Header(tuple(tokens), payload_length, payload_sha, offset)


def read_payload(file: BinaryIO, header: Header) -> bytes:
    """The state bytes after a checked header; Corrupt unless they are exactly what was written."""
    file.seek(header.offset)
    payload = file.read(header.payload_length + 1)
    if len(payload) != header.payload_length:
        raise Corrupt("the payload's length changed")
    if hashlib.sha256(payload).digest() != header.payload_sha256:
        raise Corrupt("payload digest does not match")
    return payload
