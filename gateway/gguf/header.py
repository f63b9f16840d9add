"""Reads a GGUF file's header into a `GGUFInfo` without loading the model.

`gguf.GGUFReader` materialises every metadata array (a 262k-entry vocabulary takes seconds), so this
walks the header with `struct` over an mmap and skips arrays, using the `gguf` package's constants
for value types and tensor block sizes.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from gateway.gguf.info import GGUFInfo

_SCALARS: dict[int, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
# Arrays longer than this (vocabularies, merges) are skipped, not decoded.
_MAX_DECODED_ARRAY = 4096


class GGUFFormatError(ValueError):
    pass


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0
        self.skipped_length = 0  # length of the array the last value() call skipped

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise GGUFFormatError("file is truncated") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        if self.pos + length > len(self.buf):
            raise GGUFFormatError("file is truncated")
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        self.pos += length

    def value(self, value_type: int) -> Any:
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type = self.unpack("<I")
            count = self.unpack("<Q")
            if count > _MAX_DECODED_ARRAY:
                self._skip_array(item_type, count)
                self.skipped_length = count
                return None
            return [self.value(item_type) for _ in range(count)]
        fmt = _SCALARS.get(value_type)
        if fmt is None:
            raise GGUFFormatError(f"unknown metadata value type {value_type}")
        return self.unpack(fmt)

    def _skip_array(self, item_type: int, count: int) -> None:
        if item_type == GGUFValueType.STRING:
            unpack_from, buf = struct.unpack_from, self.buf
            pos = self.pos
            for _ in range(count):
                pos += 8 + unpack_from("<Q", buf, pos)[0]
            self.pos = pos
        elif item_type in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[item_type]) * count
        else:
            for _ in range(count):
                self.value(item_type)


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse the header of a GGUF file; raises GGUFFormatError for anything that is not valid GGUF."""
    with path.open("rb") as handle:
        try:
            buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise GGUFFormatError("file is empty") from None
        with buf:
            return _parse(path, buf)


def _parse(path: Path, buf: mmap.mmap) -> GGUFInfo:
    cur = _Cursor(buf)
    if buf[:4] != b"GGUF":
        raise GGUFFormatError("not a GGUF file (bad magic)")
    cur.pos = 4
    version = cur.unpack("<I")
    if version < 2:
        raise GGUFFormatError(f"unsupported GGUF version {version}")
    tensor_count = cur.unpack("<Q")
    kv_count = cur.unpack("<Q")
    metadata: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    for _ in range(kv_count):
        key = cur.string()
        cur.skipped_length = 0
        metadata[key] = cur.value(cur.unpack("<I"))
        if cur.skipped_length:
            array_lengths[key] = cur.skipped_length
    tensor_bytes = 0
    by_layer: dict[int, int] = {}
    input_bytes = output_bytes = 0
    has_output = False
    for _ in range(tensor_count):
        name = cur.string()
        n_dims = cur.unpack("<I")
        elements = 1
        for _ in range(n_dims):
            elements *= cur.unpack("<Q")
        ggml_type = cur.unpack("<I")
        cur.unpack("<Q")  # offset
        try:
            block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise GGUFFormatError(f"unknown tensor type {ggml_type}") from None
        size = elements // block_size * type_size
        tensor_bytes += size
        layer = _layer_of(name)
        if layer is not None:
            by_layer[layer] = by_layer.get(layer, 0) + size
        elif name.startswith(("token_embd", "tok_embd")):
            input_bytes += size
        else:  # output.weight, output_norm and other non-repeating tensors run with the head
            output_bytes += size
            has_output = has_output or name == "output.weight"
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise GGUFFormatError("general.architecture is missing")
    return GGUFInfo(
        path=path,
        file_bytes=len(buf),
        architecture=architecture,
        metadata=metadata,
        tensor_bytes=tensor_bytes,
        tensor_count=tensor_count,
        array_lengths=array_lengths,
        layer_bytes=tuple(by_layer.get(i, 0) for i in range(max(by_layer, default=-1) + 1)),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        has_output_tensor=has_output,
    )


def _layer_of(tensor_name: str) -> int | None:
    """The repeating block a tensor belongs to (`blk.12.attn_q.weight` → 12), or None."""
    parts = tensor_name.split(".", 2)
    if len(parts) >= 2 and parts[0] == "blk" and parts[1].isdigit():
        return int(parts[1])
    return None
