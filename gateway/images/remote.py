"""Remote image URLs: refused unless `gateway.image_fetch` allows the host, and never fetched from a
private, loopback or link-local address unless that host is allowed by name (a wildcard is not
enough): a client must not reach the gateway's own network through it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from gateway.config import ImageFetch
from gateway.errors import GatewayError, invalid_request
from gateway.images.decode import Image, decode_image

HOW_TO_ALLOW = (
    "send the image inline as a base64 data URL (data:image/png;base64,...), or let the gateway fetch "
    "from named hosts in models.yaml: gateway.image_fetch: {allow: [images.example.com]}"
)


def _refused(where: str, why: str) -> GatewayError:
    return invalid_request(f"Image URL at '{where}' is not fetched: {why}", param=where, code="image_url_not_allowed")


def host_of(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise invalid_request(
            f"Invalid image at '{where}': an image URL is a base64 data URL or an http(s) URL.",
            param=where,
            code="invalid_image",
        )
    return parts.hostname.lower()


def _matches(host: str, policy: ImageFetch) -> bool:
    return any(fnmatchcase(host, pattern.lower()) for pattern in policy.allow)


def _named(host: str, policy: ImageFetch) -> bool:
    return host in (pattern.lower() for pattern in policy.allow)


def check_allowed(url: str, policy: ImageFetch | None, where: str) -> str:
    """The URL's host when the operator allows fetching from it; else a 400 that says how to allow it."""
    host = host_of(url, where)
    if policy is None:
        raise _refused(where, f"this gateway fetches no remote images; {HOW_TO_ALLOW}.")
    if not _matches(host, policy):
        raise _refused(where, f"'{host}' is not in gateway.image_fetch.allow; {HOW_TO_ALLOW}.")
    return host


def internal(address: str) -> bool:
    """An address inside the server's own networks (or none at all)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def fetch_image(url: str, policy: ImageFetch | None, where: str) -> Image:
    """Download and decode an allowed remote image, bounded in bytes and time; no redirects (each
    hop would need the same checks)."""
    import httpx

    host = check_allowed(url, policy, where)
    assert policy is not None
    try:
        data = await asyncio.wait_for(_download(url, host, policy, where), policy.timeout)
    except asyncio.TimeoutError:
        raise _refused(where, f"it took longer than gateway.image_fetch.timeout ({policy.timeout:g} s).") from None
    except (OSError, httpx.HTTPError) as exc:
        raise _refused(where, f"it could not be fetched ({type(exc).__name__}).") from None
    return await asyncio.to_thread(decode_image, data, where)  # Pillow, off the event loop


async def _download(url: str, host: str, policy: ImageFetch, where: str) -> bytes:
    import httpx

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    addresses = await resolve(host, port)
    if not addresses:
        raise _refused(where, f"'{host}' does not resolve.")
    if any(internal(a) for a in addresses) and not _named(host, policy):
        raise _refused(
            where, f"'{host}' is a private or loopback address; allow it by name in gateway.image_fetch.allow."
        )
    # The connection goes to the address just checked, not to whatever the name resolves to next
    # (DNS rebinding); the Host header and TLS (SNI, certificate) still name the host.
    address = addresses[0]
    pinned = parts._replace(netloc=f"[{address}]:{port}" if ":" in address else f"{address}:{port}").geturl()
    headers = {"Host": parts.netloc.rpartition("@")[2]}
    data = bytearray()
    async with (
        httpx.AsyncClient(timeout=policy.timeout, follow_redirects=False) as client,
        client.stream("GET", pinned, headers=headers, extensions={"sni_hostname": host}) as response,
    ):
        if response.status_code != 200:
            raise _refused(where, f"fetching it gave HTTP {response.status_code}.")
        async for piece in response.aiter_bytes():
            data += piece
            if len(data) > policy.max_bytes:
                raise _refused(where, f"it is larger than gateway.image_fetch.max_bytes ({policy.max_bytes}).")
    return bytes(data)
