"""API keys: made by ``latentd keys create`` (or read from a file), kept hashed, checked by
the API on every request. The secret is shown once, at creation; only its SHA-256 is kept.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
import redis.asyncio as aioredis

from shared.read_coalescer import ReadCoalescer

SECRET_PREFIX = "ltd_"
# hash: SHA-256 of the secret (hex) -> ApiKey JSON
KEYS_HASH = "latentd:apikeys"


@dataclass(frozen=True)
class ApiKey:
    """Who a secret stands for. ``id`` is the owner of every job made with it."""

    id: str
    name: str
    admin: bool = False
    created_at: str = ""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(24)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    """Keys in Redis (made by the CLI, shared by every API process)."""

    def __init__(self, client: redis.Redis):
        self._redis = client

    def create(self, name: str, admin: bool = False) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside the caller)."""
        secret = new_secret()
        key = ApiKey(id="key_" + secrets.token_hex(6), name=name, admin=admin,
                     created_at=datetime.now(UTC).isoformat())
        self._redis.hset(KEYS_HASH, digest(secret), json.dumps(asdict(key)))
        return key, secret

    def find(self, secret: str) -> ApiKey | None:
        return _key_from(self._redis.hget(KEYS_HASH, digest(secret)))

    def all(self) -> list[ApiKey]:
        keys = [ApiKey(**json.loads(raw)) for raw in self._redis.hvals(KEYS_HASH)]
        return sorted(keys, key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        for hashed, raw in self._redis.hgetall(KEYS_HASH).items():
            if json.loads(raw)["id"] == key_id:
                return bool(self._redis.hdel(KEYS_HASH, hashed))
        return False

    def count(self) -> int:
        return int(self._redis.hlen(KEYS_HASH))


class AsyncApiKeyLookup:
    """The API's per-request reads of the same keys, on its event loop (no thread hop).
    Keys looked up at the same moment are one ``HMGET`` (``ReadCoalescer``); a key revoked
    before a request asked is never found by it. One per event loop."""

    def __init__(self, client: aioredis.Redis):
        self._redis = client
        self._finds: ReadCoalescer[str | bytes | None] = ReadCoalescer(self._find_many)

    async def find(self, secret: str) -> ApiKey | None:
        return _key_from(await self._finds.read(digest(secret)))

    async def _find_many(self, digests: list[str]) -> list[str | bytes | None]:
        return await self._redis.hmget(KEYS_HASH, digests)

    async def count(self) -> int:
        return int(await self._redis.hlen(KEYS_HASH))


def _key_from(raw: str | bytes | None) -> ApiKey | None:
    return ApiKey(**json.loads(raw)) if raw else None


def read_key_file(path: Path) -> dict[str, ApiKey]:
    """Keys from a file of ``<name> <secret> [admin]`` lines (``#`` comments), by digest.

    For deployments that hand keys out by configuration; the id is derived from the
    secret, so it stays the same across restarts and replicas.
    """
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "admin"):
            raise ValueError(f"{path}:{number}: expected '<name> <secret> [admin]'")
        name, secret = fields[0], fields[1]
        if len(secret) < 16:
            raise ValueError(f"{path}:{number}: the secret of '{name}' is under 16 characters")
        hashed = digest(secret)
        keys[hashed] = ApiKey(id="key_" + hashed[:12], name=name, admin=len(fields) == 3)
    return keys

