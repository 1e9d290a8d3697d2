"""Gateway keys: stored as sha256 hashes, checked in constant time, refreshed from the store."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid

from gateway.errors import AuthenticationError
from gateway.store import ApiKeyRecord, Store, StoreError

KEY_PREFIX = "pk-"


def hash_key(key: str) -> str:
    # keys are 256-bit random tokens, so a fast hash is enough; it is never the plain key at rest
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(name: str) -> tuple[str, ApiKeyRecord]:
    """A fresh key (shown once) and its record for the store."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(key_id="key_" + uuid.uuid4().hex[:12], name=name, key_hash=hash_key(key),
                          created_at=time.time(), revoked=False)
    return key, record


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


ANONYMOUS = "anonymous"


class KeyRing:
    """The accepted key hashes: from config plus the store, reloaded every `refresh_s` seconds.

    Fails closed: with `required`, or once any key exists (in the config or the store, revoked ones
    included), every request needs a key that is in the ring now, so revoking the last key leaves a ring
    that accepts nobody. Only a gateway that does not require keys and has never had one is open."""

    def __init__(self, config_keys: list[str], store: Store, refresh_s: float = 5.0, *, required: bool = False) -> None:
        self._config_hashes = [hash_key(k) for k in config_keys]
        self._store = store
        self._refresh_s = refresh_s
        self._hashes: list[str] = list(self._config_hashes)
        self._loaded_at = float("-inf")
        self._required = required
        self._ever_keyed = bool(config_keys)

    async def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._loaded_at < self._refresh_s:
            return
        self._loaded_at = now
        try:
            records = await self._store.list_api_keys()
        except StoreError:  # a locked store must not fail requests: keep the last known keys
            return
        self._hashes = self._config_hashes + [r.key_hash for r in records if not r.revoked]
        self._ever_keyed = self._ever_keyed or bool(records)

    @property
    def enabled(self) -> bool:
        """Whether requests need a key."""
        return self._required or self._ever_keyed

    @property
    def active_keys(self) -> int:
        return len(self._hashes)

    async def check(self, token: str | None) -> str:
        """The client the token identifies (for rate limits): its key's hash, or 'anonymous' when the
        gateway takes no keys. Raises when a key is needed and missing or unknown."""
        await self.refresh()
        if not self.enabled:
            return ANONYMOUS
        if not self._hashes:
            raise AuthenticationError("this gateway has no active key, so it accepts no client: add one with "
                                      "`protege keys add --name <app>`", code="no_active_key")
        if token is None:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'",
                                      code="missing_api_key")
        presented = hash_key(token)
        # compare against every hash so the time taken does not depend on which one matches
        matched = False
        for known in self._hashes:
            matched |= hmac.compare_digest(presented, known)
        if not matched:
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        return presented[:16]
