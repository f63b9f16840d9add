"""API keys: who may call, which models they may use, and their limits (enforced by `limits.py`).

Presented keys are hashed and compared against every configured digest with `hmac.compare_digest`,
so neither a match nor a miss returns early.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.config import Settings
from gateway.config.settings import Quota


@dataclass(frozen=True)
class Principal:
    key_id: str
    models: frozenset[str] | None  # canonical model ids; None: all
    rpm: int | None
    tpm: int | None = None
    quota: Quota | None = None
    priority: str = "interactive"  # or "batch": how its requests are scheduled (scheduler/fairness.py)
    max_concurrent: int | None = None

    def may_use(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.quota is not None


ANONYMOUS = Principal("anonymous", None, None)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class KeyRing:
    def __init__(self, settings: Settings) -> None:
        self._keys: list[tuple[bytes, Principal]] = []
        for key in settings.gateway.api_keys:
            digest = bytes.fromhex(key.sha256) if key.sha256 else _digest(key.key or "")
            models = None
            if key.models is not None:
                models = frozenset(m for m in (settings.resolve(name) for name in key.models) if m is not None)
            principal = Principal(key.id, models, key.rpm, key.tpm, key.quota, key.priority, key.max_concurrent)
            self._keys.append((digest, principal))
        gateway = settings.gateway
        self._admin: bytes | None = None
        if gateway.admin_key_sha256:
            self._admin = bytes.fromhex(gateway.admin_key_sha256)
        elif gateway.admin_key:
            self._admin = _digest(gateway.admin_key)

    @property
    def required(self) -> bool:
        """Whether /v1 needs a key (any configured)."""
        return bool(self._keys)

    def authenticate(self, presented: str | None) -> Principal | None:
        if not self._keys:
            return ANONYMOUS
        if not presented:
            return None
        digest = _digest(presented)
        found = None
        for stored, principal in self._keys:
            if hmac.compare_digest(stored, digest) and found is None:
                found = principal
        return found

    def is_admin(self, presented: str | None) -> bool:
        """Admin endpoints take the admin key; with no admin key and no API keys they are open."""
        if self._admin is None:
            return not self._keys
        return presented is not None and hmac.compare_digest(self._admin, _digest(presented))


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from `Authorization: Bearer KEY` or `x-api-key: KEY`."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key.strip() if x_api_key else None
