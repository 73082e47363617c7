"""Concurrent reads of a key-value kind, sent to Redis together: ``ReadCoalescer``.

A Redis round trip costs the API process CPU per call, not per key: on the 2-core
development VM 130 to 200 µs (most of it the kernel's loopback TCP), half of a whole
``GET /healthz``. Reads asked for while one call is on its way wait for it to end and
go together in the next call, so clients polling many jobs at once (or many requests
bearing API keys) cost one call per round trip, not one each. Each read is sent after it
was asked for, so it is as fresh as one sent on its own; a read with none beside it goes
out at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

# Keys in one call at most: a long call holds Redis (single-threaded) from
# everything else, and its reply is held in memory whole.
MAX_KEYS_PER_CALL = 256

Answer = TypeVar("Answer")


class ReadCoalescer(Generic[Answer]):
    """``await read(key)``: ``read_many``'s answer for ``key``, with every other key asked
    for in the meantime sent in the same ``read_many`` call.

    At most one call is in flight. Keys asked for during it wait for it to end and go in
    the next one, so no answer is older than its question. One event loop's: the futures
    and the flight belong to the loop that runs them.
    """

    def __init__(self, read_many: Callable[[list[str]], Awaitable[Sequence[Answer]]],
                 max_per_call: int = MAX_KEYS_PER_CALL):
        self._read_many = read_many
        self._max_per_call = max_per_call
        self._asked: list[tuple[str, asyncio.Future[Answer]]] = []
        self._flight: asyncio.Task[None] | None = None

    def read(self, key: str) -> asyncio.Future[Answer]:
        """A future of ``key``'s answer, sent in the next call: await it, or cancel it if
        the answer is no longer wanted. A failed call fails each of its futures."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._asked.append((key, future))
        if self._flight is None:
            self._flight = loop.create_task(self._fly())
        return future

    async def _fly(self) -> None:
        batch: list[tuple[str, asyncio.Future[Answer]]] = []
        try:
            while self._asked:
                batch = self._asked[:self._max_per_call]
                del self._asked[:self._max_per_call]
                await self._answer(batch)
        finally:
            # Cancelled (the loop is closing): nobody is left to send the rest.
            for _, future in batch + self._asked:
                future.cancel()
            self._asked.clear()
            self._flight = None

    async def _answer(self, batch: list[tuple[str, asyncio.Future[Answer]]]) -> None:
        unique = list(dict.fromkeys(key for key, future in batch if not future.done()))
        if not unique:
            return  # every asker gave up while waiting
        try:
            replies = dict(zip(unique, await self._read_many(unique), strict=True))
        except Exception as error:  # noqa: BLE001 - handed to each asker, who raises it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for key, future in batch:
            if not future.done():
                future.set_result(replies[key])
