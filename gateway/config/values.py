"""The value types of models.yaml: byte sizes, budgets, durations, pool names; the section base."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

from gateway.config.units import parse_bytes, parse_duration


def _budget(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return parse_bytes(value)


ByteSize = Annotated[
    int,
    BeforeValidator(parse_bytes),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "examples": ["512MiB", "4GiB"]}]}),
]
Budget = Annotated[
    int | None,
    BeforeValidator(_budget),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "examples": ["auto", "4GiB", "512MiB"]},
            ]
        }
    ),
]
POOL_NAME = re.compile(r"^(host|gpu|(cuda|rocm|vulkan|metal)\d+|GPU-[0-9a-fA-F-]+)$")


def _pool_budget(value: Any) -> Any:
    """'auto', a share of the device ('90%'), or bytes."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().endswith("%"):
        share = float(value.strip()[:-1])
        if not 0 < share <= 100:
            raise ValueError(f"'{value}': a share must be above 0% and at most 100%")
        return f"{share:g}%"
    return parse_bytes(value)


PoolBudget = Annotated[
    int | str,
    BeforeValidator(_pool_budget),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^(auto|\d+(\.\d+)?%|\d+(\.\d+)?\s*[a-zA-Z]*)$"},
            ],
            "examples": ["auto", "90%", "40GiB"],
        }
    ),
]
Placement = Literal["pack", "spread"]
# llama.cpp's KV cache types the gateway offers (its type_k / type_v); engine/sizing.py has their sizes.
CacheType = Literal["f16", "q8_0", "q4_0"]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "examples": ["30s", "10m", "1h"]}]}),
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
