"""One request to one upstream server, up to its first byte: what failover may still retry.

A connection error, a timeout, a 5xx, or a body that breaks before its first byte is an
`UpstreamFailure` (the next server may be tried). Any other answer is `Opened`: a 2xx with the start
of its body, or a 4xx (the request's own fault, relayed as is)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.config import UpstreamServer

ERROR_BODY_LIMIT = 64 * 1024


class UpstreamFailure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # connect_error | timeout | server_error
        self.detail = detail


def label(server: UpstreamServer) -> str:
    """How metrics and messages name a server: its URL without credentials or query."""
    url = httpx.URL(server.base_url)
    return str(url.copy_with(username=None, password=None, query=None))


@dataclass
class Opened:
    server: UpstreamServer
    status: int
    headers: httpx.Headers
    first: bytes  # the whole body (not streamed), or its first piece (streamed)
    rest: AsyncIterator[bytes] = field(repr=False)
    _response: httpx.Response = field(repr=False)

    async def close(self) -> None:
        await self._response.aclose()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator with no items


async def open_request(
    client: httpx.AsyncClient,
    server: UpstreamServer,
    path: str,
    payload: dict[str, Any],
    *,
    stream: bool,
    request_id: str | None = None,
) -> Opened:
    headers = {"Accept": "text/event-stream" if stream else "application/json"}
    if server.api_key:
        headers["Authorization"] = f"Bearer {server.api_key}"
    if request_id:
        headers["X-Request-Id"] = request_id
    request = client.build_request(
        "POST",
        server.base_url.rstrip("/") + "/" + path,
        json=payload,
        headers=headers,
        timeout=httpx.Timeout(server.timeout, connect=server.connect_timeout),
    )
    where = label(server)
    try:
        response = await client.send(request, stream=True)
    except httpx.TimeoutException:
        raise UpstreamFailure("timeout", f"{where} did not answer within {server.timeout:g}s") from None
    except httpx.TransportError as exc:
        raise UpstreamFailure("connect_error", f"{where}: {type(exc).__name__}: {exc}") from None
    try:
        if response.status_code >= 500:
            body = await _read_some(response)
            raise UpstreamFailure("server_error", f"{where} answered {response.status_code}: {body[:200]!r}")
        if not stream or response.status_code >= 300:
            first, rest = await response.aread(), _nothing()
        else:
            rest = response.aiter_bytes()
            first = b""
            while not first:  # the first non-empty piece; an empty body is a failure too
                first = await anext(rest)
    except UpstreamFailure:
        await response.aclose()
        raise
    except (StopAsyncIteration, httpx.TransportError) as exc:
        await response.aclose()
        if isinstance(exc, httpx.TimeoutException):
            raise UpstreamFailure("timeout", f"{where} sent nothing within {server.timeout:g}s") from None
        raise UpstreamFailure("connect_error", f"{where} closed the connection before answering") from None
    except BaseException:
        await response.aclose()
        raise
    return Opened(server, response.status_code, response.headers, first, rest, response)


async def _read_some(response: httpx.Response) -> bytes:
    body = b""
    with contextlib.suppress(httpx.HTTPError):
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= ERROR_BODY_LIMIT:
                break
    return body
