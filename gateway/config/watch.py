"""Reload the configuration when its file changes (`gateway serve --watch-config SECONDS`).

Made for a Kubernetes ConfigMap mounted as a volume: the kubelet replaces the file by swapping a
symlink (`..data`), so modification times and inotify events on the path are unreliable. The file's
content is read and hashed every interval instead; it is a few kilobytes. The reload itself is the
same reload-by-diff as SIGHUP and POST /admin/reload, so streams in flight are never dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)


def digest(path: Path) -> str | None:
    """The content's sha256, or None while the file cannot be read (mid-swap, removed)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatch:
    """Calls `reload` once per change of the file's content.

    A change that fails to apply (an invalid file) is not retried: the running configuration stays
    until the content changes again, exactly as with a SIGHUP."""

    def __init__(self, path: Path, interval: float, reload: Callable[[], Awaitable[object]]) -> None:
        self.path = path
        self.interval = interval
        self._reload = reload
        self._seen = digest(path)

    async def check(self) -> bool:
        """Reload if the content differs from the last one seen; True when it did change."""
        current = await asyncio.to_thread(digest, self.path)
        if current is None or current == self._seen:
            return False
        self._seen = current
        log.info("configuration file %s changed; reloading", self.path)
        try:
            await self._reload()
        except Exception as exc:  # the reload logs why; keep watching
            log.debug("reload after a change of %s failed: %s", self.path, exc)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()
