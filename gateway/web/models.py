"""How a model is described: its card in `/v1/models` (OpenAI's shape plus where it is and what it
holds) and its state in `/admin/models`."""

from __future__ import annotations

from typing import Any

from gateway.engine.reasoning import describe
from gateway.protocol.replies import model_card
from gateway.scheduler import SlotView
from gateway.serving.tools.plan import native_tools
from gateway.upstream.proxy import Upstreams


def _where(view: SlotView) -> dict[str, Any]:
    """Per memory pool (host, cuda0...), for where it is or would be placed: estimated, then measured."""
    return {"memory_pools": dict(view.pools), "placement": view.placement}


def _tool_template(view: SlotView) -> str:
    return "native" if native_tools(view) else "generic"


def _abilities(view: SlotView) -> dict[str, Any]:
    """What a client may ask of the model; a reasoning model's format and controls."""
    if view.entry.embedding:
        return {"capabilities": ["embeddings"]}
    thinking = describe(view.entry, view.facts.info.metadata.get("tokenizer.chat_template"))
    vision = ["vision"] if view.entry.model.mmproj is not None else []
    if thinking is None:
        return {"capabilities": ["chat", "tools", *vision]}
    return {"capabilities": ["chat", "tools", "reasoning", *vision], "reasoning": thinking}


def card(view: SlotView) -> dict[str, Any]:
    path = view.facts.info.path
    # Estimate before load (what the worker holds once loaded), measured after; with GPUs, every pool.
    memory = view.measured_bytes if view.measured_bytes is not None else view.facts.estimate.total
    if set(view.pools) - {"host"}:
        memory = view.memory_bytes
    created = int(path.stat().st_mtime) if path.exists() else 0
    return {
        **model_card(view.model_id, created, view.state.client_value, memory),
        "aliases": list(view.entry.aliases),
        **_where(view),
        **({} if view.entry.embedding else {"tool_template": _tool_template(view)}),
        **_abilities(view),
    }


def remote_card(upstreams: Upstreams, model_id: str) -> dict[str, Any]:
    """Always available here; nothing is loaded locally."""
    return {**model_card(model_id, 0, "loaded", 0), "aliases": list(upstreams.settings.upstreams[model_id].aliases)}


def _batch(view: SlotView) -> dict[str, int] | None:
    """The worker's continuous batch as it last reported it (None before it has)."""
    b = view.batch
    if b is None or not view.state.resident:
        return None
    return {"running": b.running, "waiting": b.waiting, "kv_used": b.kv_used, "kv_cells": b.kv_cells}


def state(view: SlotView) -> dict[str, Any]:
    return {
        "id": view.model_id,
        "state": view.state.value,
        "aliases": list(view.entry.aliases),
        "failure": view.failure or None,
        "pinned": view.entry.pinned,
        "memory_bytes": view.memory_bytes,
        "measured_pools": dict(view.measured_pools) if view.measured_pools is not None else None,
        "estimated_bytes": view.estimated_bytes,
        "measured_bytes": view.measured_bytes,
        "leases": view.holds,
        "in_flight": view.running,
        "queued": view.holds - view.running,
        "parallel": view.parallel,
        # Who holds the turns and who waits, per key and priority (paused: preempted batch requests).
        "keys": [
            {"key": t.key, "priority": t.priority, "running": t.running, "waiting": t.waiting, "paused": t.paused}
            for t in view.tenants
        ],
        "preemptions": view.preemptions,
        "idle_expires_in": view.idle_expires_in,
        "draining": view.draining,
        "batch": _batch(view),
        **_where(view),
        "tool_template": _tool_template(view),
    }
