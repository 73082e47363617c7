"""Concurrent reads share one call, none is answered from a call sent before it was asked."""

from __future__ import annotations

import asyncio

import pytest
import redis

from shared.read_coalescer import ReadCoalescer

pytestmark = pytest.mark.anyio


class RecordingReads:
    """A ``read_many`` that answers ``"<key>@<call number>"`` and keeps each call's keys;
    ``hold`` keeps a call from answering until it is set."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Event()
        self.fail_next: Exception | None = None

    async def __call__(self, keys: list[str]) -> list[str | None]:
        self.calls.append(list(keys))
        self.started.set()
        await self.hold.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return [None if key.startswith("missing") else f"{key}@{len(self.calls)}"
                for key in keys]


async def test_reads_asked_together_go_in_one_call_each_key_once() -> None:
    reads = RecordingReads()
    coalescer = ReadCoalescer(reads)
    answers = await asyncio.gather(*(coalescer.read(key)
                                     for key in ("a", "b", "a", "missing-c")))
    assert answers == ["a@1", "b@1", "a@1", None]
    assert reads.calls == [["a", "b", "missing-c"]]


async def test_a_read_asked_during_a_call_waits_for_the_next_one() -> None:
    # Freshness: a call already on its way may have read the job before this read was
    # asked for, so its answer is not this read's.
    reads = RecordingReads()
    reads.hold.clear()
    coalescer = ReadCoalescer(reads)
    first = coalescer.read("a")
    await reads.started.wait()
    later = [coalescer.read("a"), coalescer.read("b")]
    reads.hold.set()
    assert await first == "a@1"
    assert await asyncio.gather(*later) == ["a@2", "b@2"]
    assert reads.calls == [["a"], ["a", "b"]]


async def test_a_failed_call_fails_its_reads_and_the_next_call_still_goes_out() -> None:
    reads = RecordingReads()
    reads.hold.clear()
    reads.fail_next = redis.ConnectionError("Redis went away")
    coalescer = ReadCoalescer(reads)
    failing = coalescer.read("a")
    await reads.started.wait()
    after = coalescer.read("b")
    reads.hold.set()
    with pytest.raises(redis.ConnectionError, match="went away"):
        await failing
    assert await after == "b@2"


async def test_a_read_given_up_on_leaves_the_others_answered_and_is_not_sent_alone() -> None:
    reads = RecordingReads()
    reads.hold.clear()
    coalescer = ReadCoalescer(reads)
    first = coalescer.read("a")
    await reads.started.wait()
    abandoned, kept = coalescer.read("x"), coalescer.read("b")
    abandoned.cancel()
    lone = coalescer.read("y")
    lone.cancel()
    reads.hold.set()
    assert (await first, await kept) == ("a@1", "b@2")
    assert reads.calls == [["a"], ["b"]]  # "x" and "y" were no longer wanted when sent


async def test_a_call_holds_at_most_its_limit_and_the_rest_follow() -> None:
    reads = RecordingReads()
    coalescer = ReadCoalescer(reads, max_per_call=2)
    answers = await asyncio.gather(*(coalescer.read(key) for key in "abcde"))
    assert answers == ["a@1", "b@1", "c@2", "d@2", "e@3"]
    assert reads.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_lone_read_goes_out_without_waiting_for_company() -> None:
    reads = RecordingReads()
    coalescer = ReadCoalescer(reads)
    assert await asyncio.wait_for(coalescer.read("a"), timeout=1) == "a@1"
    assert await asyncio.wait_for(coalescer.read("b"), timeout=1) == "b@2"
