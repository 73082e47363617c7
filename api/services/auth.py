"""Who is calling: API keys (``Authorization: Bearer`` or ``X-API-Key``) → a ``Caller``.

Every job belongs to the key that made it; another key is told it does not exist. When
no key exists at all, on a loopback address only, every caller is the one "public"
owner (the laptop case); the API refuses to start on any other address without keys.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from api.errors import ApiError
from shared.api_keys import ApiKey, ApiKeyStore, AsyncApiKeyLookup, digest
from shared.settings import Settings

log = logging.getLogger(__name__)

PUBLIC_OWNER = "public"
ADMIN_KEY_ID = "key_admin"
# Keys made with the CLI while the API runs turn auth on within this many seconds.
KEY_COUNT_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Caller:
    """The owner a request acts as; an admin sees every owner's jobs."""

    owner: str
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.owner


class Unauthorized(ApiError):
    def __init__(self, code: str, message: str):
        super().__init__(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Turns the request's key into a ``Caller``; built once per API process.

    ``store`` answers the startup check (sync); ``lookup`` the requests, on the event loop.
    """

    def __init__(self, store: ApiKeyStore, lookup: AsyncApiKeyLookup,
                 configured: dict[str, ApiKey], always: bool = False):
        self._store = store
        self._lookup = lookup
        self._configured = configured  # by digest: the key file and LATENTD_ADMIN_KEY
        # Beyond loopback a key is always required, even if every key gets revoked.
        self._always = always
        self._lock = threading.Lock()
        self._counted_at = float("-inf")
        self._stored_keys = 0

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis,
                      async_client: aioredis.Redis) -> Authenticator:
        """The process's authenticator; ``ValueError`` naming the setting when the API
        would listen beyond loopback with no key to require."""
        from shared.api_keys import read_key_file

        configured: dict[str, ApiKey] = {}
        if settings.api_keys_file is not None:
            try:
                configured.update(read_key_file(settings.api_keys_file))
            except (OSError, ValueError) as exc:
                raise ValueError(f"LATENTD_API_KEYS_FILE: {exc}") from None
        if settings.admin_key is not None:
            configured[digest(settings.admin_key)] = ApiKey(ADMIN_KEY_ID, "admin", admin=True)
        auth = cls(ApiKeyStore(client), AsyncApiKeyLookup(async_client), configured,
                   always=not is_loopback(settings.host))
        if not is_loopback(settings.host) and not auth.keys_exist(strict=True):
            raise ValueError(
                f"LATENTD_HOST {settings.host} is not a loopback address and no API key "
                "exists: anyone reaching the port could see and cancel every job. Create one "
                "with `latentd keys create --name NAME`, or set LATENTD_ADMIN_KEY or "
                "LATENTD_API_KEYS_FILE"
            )
        if not auth.keys_exist():
            log.warning(
                "latentd: NO API KEYS: every caller of %s:%s is the same 'public' owner and "
                "sees every job. Create a key with `latentd keys create --name NAME`.",
                settings.host, settings.port,
            )
        return auth

    def keys_exist(self, strict: bool = False) -> bool:
        """True once any key exists. ``strict``: an unreachable Redis counts as "yes"
        (refuse rather than run open); otherwise it counts as the last answer seen."""
        cached = self._cached_answer()
        if cached is not None:
            return cached
        now = time.monotonic()
        try:
            count = self._store.count()
        except redis.RedisError:
            return strict or self._stored_keys > 0
        return self._remember(now, count)

    async def _keys_exist_now(self) -> bool:
        """``keys_exist()`` as a request asks it, read on the event loop."""
        cached = self._cached_answer()
        if cached is not None:
            return cached
        now = time.monotonic()
        try:
            count = await self._lookup.count()
        except redis.RedisError:
            return self._stored_keys > 0
        return self._remember(now, count)

    def _cached_answer(self) -> bool | None:
        if self._configured:
            return True
        with self._lock:
            if time.monotonic() - self._counted_at < KEY_COUNT_CACHE_SECONDS:
                return self._stored_keys > 0
        return None

    def _remember(self, counted_at: float, count: int) -> bool:
        with self._lock:
            self._counted_at, self._stored_keys = counted_at, count
        return count > 0

    async def caller(self, authorization: str | None, api_key: str | None) -> Caller:
        secret = api_key or _bearer(authorization)
        if not self._always and not await self._keys_exist_now():
            return Caller(PUBLIC_OWNER)
        if not secret:
            raise Unauthorized("missing_api_key",
                               "send your API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
        key = self._configured.get(digest(secret)) or await self._lookup.find(secret)
        if key is None:
            raise Unauthorized("invalid_api_key", "the API key is not valid (or was revoked)")
        return Caller(key.id, admin=key.admin)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
