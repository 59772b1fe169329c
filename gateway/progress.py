"""How each tenant's IndexPhotos streams are going, as this gateway replica serves them: the
streams open now, what they received and answered in the current run and since the replica
started, the photos finished per second over the last minute, and when the last one was.

The index streams report to it (``gateway.indexing``) and Stats reads it. Its memory is
bounded whatever the number of tenants: a tenant with no open stream and nothing received
or answered for ``forget_after_s`` is forgotten, and the rate is kept in one-second buckets
over the last minute only.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from google.protobuf.timestamp_pb2 import Timestamp

from facesearch.v1 import facesearch_pb2

RATE_WINDOW_S = 60
FORGET_AFTER_S = 3600.0
# The tenants are swept for forgotten ones at most this often.
SWEEP_EVERY_S = 60.0

FAILED = (facesearch_pb2.PHOTO_STATUS_FAILED, facesearch_pb2.PHOTO_STATUS_INVALID)


@dataclass
class Counts:
    streams: int = 0
    photos_received: int = 0
    photos_done: int = 0
    photos_failed: int = 0
    photos_duplicate: int = 0
    photos_no_face: int = 0
    faces_stored: int = 0

    def message(self) -> facesearch_pb2.IndexingCounts:
        return facesearch_pb2.IndexingCounts(**{f.name: getattr(self, f.name) for f in fields(self)})


@dataclass
class TenantProgress:
    streams_open: int = 0
    run: Counts = field(default_factory=Counts)
    total: Counts = field(default_factory=Counts)
    run_started: float = 0.0  # monotonic
    last_active: float = 0.0  # monotonic
    last_photo_at: float | None = None  # wall clock
    # (monotonic second, photos finished in it), the last RATE_WINDOW_S seconds only.
    finished: deque[list[int]] = field(default_factory=deque)

    def both(self) -> tuple[Counts, Counts]:
        return self.run, self.total

    def trim(self, now: float) -> None:
        while self.finished and self.finished[0][0] <= int(now) - RATE_WINDOW_S:
            self.finished.popleft()


class IndexingProgress:
    """Safe to call from any thread and from the event loop (every call takes one lock briefly)."""

    def __init__(
        self,
        *,
        forget_after_s: float = FORGET_AFTER_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._forget_after_s = forget_after_s
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._tenants: dict[str, TenantProgress] = {}
        self._lock = threading.Lock()
        self._last_sweep = monotonic()

    def _tenant(self, tenant: str, now: float) -> TenantProgress:
        self._sweep(now)
        progress = self._tenants.get(tenant)
        if progress is None:
            progress = self._tenants[tenant] = TenantProgress()
        progress.last_active = now
        return progress

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = now
        idle = [
            tenant
            for tenant, progress in self._tenants.items()
            if progress.streams_open == 0 and now - progress.last_active > self._forget_after_s
        ]
        for tenant in idle:
            del self._tenants[tenant]

    def stream_opened(self, tenant: str) -> None:
        now = self._monotonic()
        with self._lock:
            progress = self._tenant(tenant, now)
            if progress.streams_open == 0:  # a new run
                progress.run = Counts()
                progress.run_started = now
                progress.finished.clear()
            progress.streams_open += 1
            for counts in progress.both():
                counts.streams += 1

    def stream_closed(self, tenant: str) -> None:
        now = self._monotonic()
        with self._lock:
            progress = self._tenant(tenant, now)
            progress.streams_open = max(0, progress.streams_open - 1)

    def photo_received(self, tenant: str) -> None:
        now = self._monotonic()
        with self._lock:
            for counts in self._tenant(tenant, now).both():
                counts.photos_received += 1

    def photo_done(self, tenant: str, result: facesearch_pb2.PhotoResult) -> None:
        now = self._monotonic()
        with self._lock:
            progress = self._tenant(tenant, now)
            for counts in progress.both():
                counts.photos_done += 1
                if result.status in FAILED:
                    counts.photos_failed += 1
                elif result.status == facesearch_pb2.PHOTO_STATUS_DUPLICATE:
                    counts.photos_duplicate += 1
                elif result.status == facesearch_pb2.PHOTO_STATUS_NO_FACE:
                    counts.photos_no_face += 1
                counts.faces_stored += result.faces_stored
            progress.last_photo_at = self._wall_clock()
            second = int(now)
            if progress.finished and progress.finished[-1][0] == second:
                progress.finished[-1][1] += 1
            else:
                progress.finished.append([second, 1])
            progress.trim(now)

    def tenants(self) -> int:
        """How many tenants are remembered now."""
        with self._lock:
            return len(self._tenants)

    def of(self, tenant: str) -> facesearch_pb2.IndexingProgress:
        """The tenant's figures (all zero for a tenant that has not indexed, or was forgotten)."""
        now = self._monotonic()
        with self._lock:
            self._sweep(now)
            progress = self._tenants.get(tenant)
            if progress is None:
                return facesearch_pb2.IndexingProgress(run=Counts().message(), total=Counts().message())
            progress.trim(now)
            finished = sum(count for _, count in progress.finished)
            # Over the last minute, or over the run when it began less than a minute ago.
            window = max(1.0, min(float(RATE_WINDOW_S), now - progress.run_started))
            reply = facesearch_pb2.IndexingProgress(
                streams_open=progress.streams_open,
                run=progress.run.message(),
                total=progress.total.message(),
                photos_per_second=finished / window,
            )
            if progress.last_photo_at is not None:
                reply.last_photo_at.CopyFrom(_timestamp(progress.last_photo_at))
            return reply


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
