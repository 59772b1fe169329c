"""The one deadline type of the suite: a point in time by which a call must be answered.

A request's deadline is made once, where the request arrives (from the caller's gRPC
deadline, at most the service's own limit), and handed down to every call it makes, so
that no call outlives the request that made it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc


class DeadlineExceeded(TimeoutError):
    """The deadline passed before the work named in the message could start."""


@dataclass(frozen=True)
class Deadline:
    """A ``time.monotonic()`` instant."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def of_call(cls, context: grpc.aio.ServicerContext | None, limit_s: float) -> Deadline:
        """What is left of an incoming call's deadline, at most ``limit_s`` seconds."""
        remaining = context.time_remaining() if context is not None else None
        return cls.after(limit_s if remaining is None else min(remaining, limit_s))

    def remaining(self) -> float:
        """Seconds left; zero or less once it has passed."""
        return self.at - time.monotonic()

    def check(self, what: str) -> float:
        """The seconds left for ``what``; raises ``DeadlineExceeded`` when none are."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"deadline exceeded before {what}")
        return left

    def timeout(self, limit_s: float | None = None) -> float:
        """The timeout to give one call: what is left, at most ``limit_s``."""
        left = max(0.0, self.remaining())
        return left if limit_s is None else min(left, limit_s)
