"""Requests for remote models pass through to their servers: the body as the client sent it (with the
server's model name), the answer with this gateway's model id. Streams are relayed event by event; a
server that fails mid-stream ends the stream with an in-band error and `[DONE]`, as a crashed worker does."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.config import Settings, UpstreamEntry
from gateway.errors import GatewayError, queue_full
from gateway.observability.record import RequestRecord
from gateway.upstream.breaker import Circuit
from gateway.upstream.client import Opened, label
from gateway.upstream.failover import UpstreamModel, UpstreamObserver

log = logging.getLogger(__name__)
DONE = "[DONE]"
QUEUE_RETRY_AFTER = 1.0


@dataclass
class Reply:
    """A JSON answer (`body`, `status`, `headers`), or a stream of SSE data payloads (`events`)."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    events: AsyncIterator[str] | None = None
    usage: dict[str, Any] | None = None
    # Frees the model's slot and the connection; idempotent. Run it after the response, even when the
    # client left before the stream was ever iterated (an unstarted generator runs no `finally`).
    close: Callable[[], Awaitable[None]] | None = None


class Upstreams:
    """The remote models of the configuration, sharing one HTTP connection pool."""

    def __init__(
        self, settings: Settings, observer: UpstreamObserver, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._observer = observer
        self._client = httpx.AsyncClient(
            timeout=None, limits=httpx.Limits(max_keepalive_connections=32), transport=transport
        )
        self.models: dict[str, UpstreamModel] = {}
        self.settings = settings
        self.apply(settings)

    def apply(self, settings: Settings) -> dict[str, list[str]]:
        """Follow a reload: unchanged entries keep their circuit breakers' state. Requests in flight
        finish on the servers they started with."""
        models = {}
        changed = []
        for model_id, entry in settings.upstreams.items():
            current = self.models.get(model_id)
            if current is not None and current.entry == entry:
                models[model_id] = current
                continue
            if current is not None:
                changed.append(model_id)
            models[model_id] = UpstreamModel(model_id, entry, self._observer)
        old = self.models
        self.models = models
        self.settings = settings
        return {
            "added": [m for m in models if m not in old],
            "removed": [m for m in old if m not in models],
            "changed": changed,
            "unchanged": [m for m in models if m in old and m not in changed],
        }

    def get(self, model_id: str) -> UpstreamModel | None:
        return self.models.get(model_id)

    def circuits(self) -> list[tuple[str, str, Circuit]]:
        return [(m, where, state) for m, model in self.models.items() for where, state in model.circuits()]

    async def close(self) -> None:
        await self._client.aclose()

    async def forward(
        self,
        model_id: str,
        path: str,
        payload: dict[str, Any],
        *,
        stream: bool,
        record: RequestRecord | None = None,
    ) -> Reply:
        """Pass a request through (`path` below the servers' base URL, such as "chat/completions")."""
        model = self.models[model_id]
        request_id = record.request_id if record is not None else None
        entry: UpstreamEntry = model.entry
        limit = entry.max_queue or self.settings.gateway.max_queue
        if model.in_flight >= limit:
            raise queue_full(model_id, limit, QUEUE_RETRY_AFTER)
        model.in_flight += 1
        try:
            opened = await model.open(self._client, path, payload, stream=stream, request_id=request_id)
        except BaseException:
            model.in_flight -= 1
            raise
        if opened.status >= 300 or not stream:
            try:
                reply = _whole(model_id, opened)
                if record is not None and reply.usage is not None:
                    _note_usage(record, reply.usage)
                return reply
            finally:
                model.in_flight -= 1
                await opened.close()
        closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                model.in_flight -= 1
                await opened.close()

        return Reply(events=_relay(model, opened, record, close), close=close)


def _whole(model_id: str, opened: Opened) -> Reply:
    try:
        body = json.loads(opened.first or b"null")
    except ValueError:
        body = None
    if opened.status >= 300:
        headers = {"Retry-After": opened.headers["retry-after"]} if "retry-after" in opened.headers else None
        if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
            text = opened.first[:500].decode("utf-8", "replace")
            body = GatewayError(opened.status, f"{label(opened.server)} answered {opened.status}: {text}").body()
        return Reply(status=opened.status, body=body, headers=headers)
    if not isinstance(body, dict):
        raise GatewayError(
            502,
            f"{label(opened.server)} answered with something that is not a JSON object.",
            type="server_error",
            code="upstream_failed",
        )
    if "model" in body:
        body["model"] = model_id
    usage = body.get("usage")
    return Reply(body=body, usage=usage if isinstance(usage, dict) else None)


async def _relay(
    model: UpstreamModel, opened: Opened, record: RequestRecord | None, close: Callable[[], Awaitable[None]]
) -> AsyncIterator[str]:
    """The server's SSE `data:` payloads with the model id rewritten; an in-band error if it breaks."""
    buffer = b""
    done = False
    try:
        pieces = _pieces(opened)
        async for piece in pieces:
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.rstrip(b"\r").decode("utf-8", "replace")
                if not line.startswith("data:"):
                    continue  # comments (pings), event names, blank separators
                data = line[5:].strip()
                if data == DONE:
                    done = True
                    yield DONE
                    return
                yield _rewrite(data, model.model_id, record)
        kind, detail = "broken", "closed the stream before it ended"
    except httpx.TimeoutException:
        kind, detail = "timeout", f"sent nothing for {opened.server.timeout:g}s"
    except httpx.TransportError as exc:
        kind, detail = "broken", f"failed mid-stream ({type(exc).__name__})"
    finally:
        await close()
    if not done:
        model.broke(opened, kind)
        log.warning("upstream %s of %s %s", label(opened.server), model.model_id, detail)
        error = GatewayError(
            504 if kind == "timeout" else 502,
            f"The server answering for model '{model.model_id}' ({label(opened.server)}) {detail}. "
            "The response is incomplete.",
            type="server_error",
            code="upstream_timeout" if kind == "timeout" else "upstream_failed",
        )
        yield json.dumps(error.body(), separators=(",", ":"))
        yield DONE


async def _pieces(opened: Opened) -> AsyncIterator[bytes]:
    yield opened.first
    async for piece in opened.rest:
        yield piece


def _note_usage(record: RequestRecord, usage: dict[str, Any]) -> None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        record.finished(
            prompt,
            completion,
            _detail(usage, "completion_tokens_details", "reasoning_tokens"),
            _detail(usage, "prompt_tokens_details", "cached_tokens"),
        )


def _detail(usage: dict[str, Any], part: str, name: str) -> int:
    details = usage.get(part)
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) else 0


def _note_chunk(record: RequestRecord, chunk: dict[str, Any]) -> None:
    """Time to first token and token counts for the access log and metrics, from the relayed chunks."""
    for choice in chunk.get("choices") or []:
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str) and text:
                record.token(text)
    if isinstance(chunk.get("usage"), dict):
        _note_usage(record, chunk["usage"])


def _rewrite(data: str, model_id: str, record: RequestRecord | None) -> str:
    try:
        chunk = json.loads(data)
    except ValueError:
        return data
    if isinstance(chunk, dict) and record is not None:
        _note_chunk(record, chunk)
    if isinstance(chunk, dict) and "model" in chunk:
        chunk["model"] = model_id
        return json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
    return data
