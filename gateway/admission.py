"""Admission control: how much work the gateway takes on at once.

A gateway process serves at most ``max_concurrent_calls`` calls together (an IndexPhotos
stream counts as one for its whole life), holding at most ``max_request_mb`` of request
bytes among them (a request is counted from when it is read until its answer). A call
past either bound is refused at once with RESOURCE_EXHAUSTED and a retry hint: the
trailing metadata ``grpc-retry-pushback-ms`` (which gRPC clients with a retry policy for
RESOURCE_EXHAUSTED, such as the SDK's, wait before their next attempt) and the same delay
in the message. Nothing waits in a queue: a gateway past capacity answers in
microseconds instead of growing its memory and its latency.

A request larger than the whole byte budget is still served when the gateway holds
nothing else (message size itself is bounded by ``max_message_mb``), so every valid
request can get through an idle gateway.

The photos of an IndexPhotos stream are counted too, from when each is read until its
result is sent (one result per photo, in order): a stream whose next photo would pass the
budget is not refused (that would end a backfill) but stops reading until bytes are
given back, so gRPC's flow control holds the caller's photos on their side.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from gateway.errors import GatewayError

PUSHBACK_HEADER = "grpc-retry-pushback-ms"
# The hint is spread over +-50% of the configured delay, so refused callers do not all return at once.
PUSHBACK_JITTER = 0.5


class Admission:
    """Counts the calls and request bytes in hand; ``admit`` takes a share or refuses.

    Every call runs on the server's one event loop, so the counts need no lock."""

    def __init__(self, max_calls: int, max_bytes: int, retry_after_s: float) -> None:
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self.retry_after_s = retry_after_s
        self.calls = 0
        self.bytes = 0
        self.refused = 0
        self.peak_calls = 0  # the most calls and bytes held at once so far
        self.peak_bytes = 0
        self._given_back = asyncio.Event()

    def pushback_ms(self) -> int:
        spread = 1.0 + random.uniform(-PUSHBACK_JITTER, PUSHBACK_JITTER)
        return max(1, round(self.retry_after_s * 1000 * spread))

    def _refusal(self, context: grpc.aio.ServicerContext, what: str) -> GatewayError:
        self.refused += 1
        delay = self.pushback_ms()
        context.set_trailing_metadata(((PUSHBACK_HEADER, str(delay)),))
        return GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"the gateway is at capacity ({what}); retry after {delay} ms"
        )

    @asynccontextmanager
    async def admit(self, request_bytes: int, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Holds one call and ``request_bytes`` while the block runs; raises GatewayError
        (RESOURCE_EXHAUSTED, with the retry hint set on ``context``) when they are not free."""
        if self.calls >= self.max_calls:
            raise self._refusal(context, f"{self.max_calls} calls in progress")
        if self.bytes and self.bytes + request_bytes > self.max_bytes:
            raise self._refusal(context, f"{self.max_bytes // (1024 * 1024)} MB of requests in hand")
        self.calls += 1
        self._hold(request_bytes)
        self.peak_calls = max(self.peak_calls, self.calls)
        try:
            yield
        finally:
            self.calls -= 1
            self._give_back(request_bytes)

    def _hold(self, count: int) -> None:
        self.bytes += count
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _give_back(self, count: int) -> None:
        self.bytes -= count
        if count:
            self._given_back.set()
            self._given_back = asyncio.Event()

    async def _wait_for(self, count: int) -> None:
        while self.bytes and self.bytes + count > self.max_bytes:
            await self._given_back.wait()
        self._hold(count)

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[StreamBytes]:
        """The byte count of one stream of requests answered one for one, in order; what it
        still holds is given back when the block ends."""
        held = StreamBytes(self)
        try:
            yield held
        finally:
            held.close()


class StreamBytes:
    """Holds the bytes of each request of a stream from when it is read (waiting for room
    when there is none) until its answer is sent; gives back what is left at the end."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._held: deque[int] = deque()

    async def read(self, requests: AsyncIterator) -> AsyncIterator:
        async for request in requests:
            size = request.ByteSize()
            await self.admission._wait_for(size)
            self._held.append(size)
            yield request

    def answered(self) -> None:
        if self._held:
            self.admission._give_back(self._held.popleft())

    def close(self) -> None:
        self.admission._give_back(sum(self._held))
        self._held.clear()
