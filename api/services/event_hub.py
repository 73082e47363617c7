"""One pub/sub connection per API process, shared by every SSE stream and ``Prefer: wait``.

A connection per follower let ~10,000 followers exhaust Redis's connections until every
submit failed; here followers subscribe through one connection, and their number is
capped in total and per owner (``LATENTD_MAX_STREAMS``, ``LATENTD_MAX_STREAMS_PER_KEY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import redis
import redis.asyncio as aioredis

from api.errors import ApiError, Unavailable

log = logging.getLogger(__name__)

# Waiting for Redis to confirm a subscription; longer means Redis is in trouble.
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
RETRY_AFTER_SECONDS = 5
# After a lost connection, the reader tries again this often (redis-py resubscribes).
RECONNECT_SECONDS = 1.0


class TooManyStreams(ApiError):
    def __init__(self, message: str):
        super().__init__(429, "too_many_streams", message,
                         headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@dataclass(eq=False)  # followers are told apart by identity (they live in sets)
class Subscription:
    """Messages of one channel for one follower, in the order Redis published them."""

    channel: str
    messages: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def next(self, timeout: float) -> str | None:
        """The next message, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.messages.get(), timeout)
        except TimeoutError:
            return None


@dataclass(frozen=True)
class StreamSlot:
    """A place under the stream caps (``EventHub.reserve``): its holder follows channels
    through it, one after another, counted once."""

    hub: EventHub

    def follow(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Follow ``channel`` while the block runs: as ``EventHub.subscribe``, uncounted."""
        return self.hub._follow(channel)


class EventHub:
    """Fans one Redis pub/sub connection out to the process's followers of job channels."""

    def __init__(self, client: aioredis.Redis, max_streams: int, max_streams_per_owner: int):
        self._pubsub = client.pubsub()
        self._max_streams = max_streams
        self._max_per_owner = max_streams_per_owner
        self._followers: dict[str, set[Subscription]] = defaultdict(set)
        self._per_owner: Counter[str] = Counter()
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        return sum(self._per_owner.values())

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, owner: str) -> AsyncIterator[Subscription]:
        """Follow ``channel``: every message published after this returns reaches the
        subscription. Raises ``TooManyStreams`` (429) or ``Unavailable`` (503) first."""
        async with self.reserve(owner) as slot, slot.follow(channel) as subscription:
            yield subscription

    @contextlib.asynccontextmanager
    async def reserve(self, owner: str) -> AsyncIterator[StreamSlot]:
        """A follower's place under the caps, counted for ``owner`` until the block ends;
        raises ``TooManyStreams`` (429) or ``Unavailable`` (503) at once, so that a caller
        can be refused before it does what it would have to undo (store a job)."""
        self._admit(owner)
        self._per_owner[owner] += 1
        try:
            yield StreamSlot(self)
        finally:
            self._per_owner[owner] -= 1
            if not self._per_owner[owner]:
                del self._per_owner[owner]

    @contextlib.asynccontextmanager
    async def _follow(self, channel: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(channel)
        try:
            await self._add(subscription)
            yield subscription
        finally:
            # Shielded: a disconnected SSE client cancels its stream, and the follower
            # must still be removed (else the connection stays subscribed for nothing).
            with anyio.CancelScope(shield=True):
                await self._remove(subscription)

    def _admit(self, owner: str) -> None:
        if self.streams >= self._max_streams:
            raise Unavailable("too_many_streams",
                              f"this server follows {self._max_streams} jobs already; try again",
                              RETRY_AFTER_SECONDS)
        if self._per_owner[owner] >= self._max_per_owner:
            raise TooManyStreams(
                f"at most {self._max_per_owner} event streams and waits at once per key")

    async def _add(self, subscription: Subscription) -> None:
        channel = subscription.channel
        async with self._lock:
            first = not self._followers[channel]
            self._followers[channel].add(subscription)
            if first:
                confirmed = self._confirmed[channel] = asyncio.get_running_loop().create_future()
                await self._pubsub.subscribe(channel)
                self._ensure_reader()
            else:
                confirmed = self._confirmed[channel]
        try:
            # Only once Redis confirms is every later message sure to reach us.
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT_SECONDS)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._remove(subscription)
            raise

    async def _remove(self, subscription: Subscription) -> None:
        channel = subscription.channel
        async with self._lock:
            followers = self._followers.get(channel)
            if followers is None:
                return
            followers.discard(subscription)
            if followers:
                return
            del self._followers[channel]
            self._confirmed.pop(channel, None)
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="latentd-event-hub")

    async def _read_forever(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError) as exc:
                # redis-py reconnects and resubscribes on the next read; followers see
                # quiet meanwhile and fall back on their periodic re-read.
                log.warning("event hub lost Redis (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            if message is None:
                continue
            channel = _text(message.get("channel"))
            if message["type"] == "subscribe":
                future = self._confirmed.get(channel)
                if future is not None and not future.done():
                    future.set_result(None)
            elif message["type"] == "message":
                for subscription in tuple(self._followers.get(channel, ())):
                    subscription.messages.put_nowait(_text(message["data"]))

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
