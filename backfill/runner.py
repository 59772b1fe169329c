"""The backfill itself: the shard's photos not yet done, in batches, to the gateway's
IndexPhotos by ``workers`` concurrent callers.

Each worker sends one batch as one IndexPhotos stream and waits for its answers (written to
the journal as they come) before it takes the next, so at any time at most ``workers``
batches are in flight: that bounds memory (photos are read only when sent), applies
back-pressure (a slow gateway slows the walk), and bounds what a kill costs (at most one
batch per worker is sent again). The photos come from the source in order through a
bounded queue; the source is walked once more, by names only, to count them for the
estimate of the time left.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from backfill.journal import Journal
from backfill.sources import Shard, SourcePhoto
from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchClient, FaceSearchError

log = logging.getLogger(__name__)
END = None
WHOLE = Shard()


@dataclass
class Progress:
    """What the backfill has done, for the progress line and the final report."""

    started: float = field(default_factory=time.monotonic)
    total: int | None = None  # photos of the shard, once counted
    skipped: int = 0  # done by an earlier run
    statuses: Counter = field(default_factory=Counter)
    faces: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def line(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        photos_s, faces_s = self.sent / seconds, self.faces / seconds
        left = ""
        if self.total is not None and photos_s > 0:
            remaining = max(self.total - self.skipped - self.sent, 0)
            left = f", about {remaining / photos_s:.0f} s left"
        total = f" of {self.total}" if self.total is not None else ""
        return (
            f"{self.sent + self.skipped}{total} photos ({self.skipped} done before), "
            f"{photos_s:.1f} photos/s, {faces_s:.1f} faces/s{left}"
        )


def status_name(status: int) -> str:
    return facesearch_pb2.PhotoStatus.Name(status).removeprefix("PHOTO_STATUS_").lower()


class Backfill:
    def __init__(
        self,
        client: FaceSearchClient,
        photos: Callable[[], Iterator[SourcePhoto]],
        journal: Journal,
        shard: Shard = WHOLE,
        *,
        workers: int = 4,
        batch: int = 16,
        on_progress: Callable[[Progress], None] = lambda _: None,
    ) -> None:
        self.client = client  # gRPC channels are thread-safe: the workers share it
        self.photos = photos
        self.journal = journal
        self.shard = shard
        self.workers = workers
        self.batch = batch
        self.on_progress = on_progress
        self.progress = Progress()
        self.stop = threading.Event()

    def _todo(self) -> Iterator[SourcePhoto]:
        for photo in self.photos():
            if self.stop.is_set():
                return
            if not self.shard.holds(photo.key):
                continue
            if self.journal.done(photo.key):
                with self.progress.lock:
                    self.progress.skipped += 1
                continue
            yield photo

    def _count(self) -> None:
        total = sum(1 for photo in self.photos() if self.shard.holds(photo.key))
        self.progress.total = total

    def run(self) -> Progress:
        batches: queue.Queue = queue.Queue(maxsize=self.workers)
        errors: list[Exception] = []
        threading.Thread(target=self._count, name="backfill-count", daemon=True).start()
        workers = [
            threading.Thread(target=self._work, args=(batches, errors), name=f"backfill-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for worker in workers:
            worker.start()
        try:
            chunk: list[SourcePhoto] = []
            for photo in self._todo():
                chunk.append(photo)
                if len(chunk) == self.batch:
                    self._put(batches, chunk, errors)
                    chunk = []
            if chunk:
                self._put(batches, chunk, errors)
        finally:
            for _ in workers:
                batches.put(END)
            for worker in workers:
                worker.join()
        if errors:
            raise errors[0]
        return self.progress

    def _put(self, batches: queue.Queue, chunk: list[SourcePhoto], errors: list[Exception]) -> None:
        while not errors:
            try:
                batches.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue
        raise errors[0]

    def _work(self, batches: queue.Queue, errors: list[Exception]) -> None:
        try:
            while (chunk := batches.get()) is not END:
                if not errors and not self.stop.is_set():  # once stopped, queued batches are not sent
                    self._send(self.client, chunk)
        except Exception as error:  # the walk stops; run() raises it
            log.exception("backfill worker failed")
            errors.append(error)
            self.stop.set()
            while batches.get() is not END:  # let the walk finish putting its END markers
                pass

    def _send(self, client: FaceSearchClient, chunk: list[SourcePhoto]) -> None:
        photos = (facesearch_pb2.Photo(id=p.key, uri=p.uri, content=p.read()) for p in chunk)
        try:
            for result in client.index(photos):
                self._answered(result.photo_id, status_name(result.status), result)
        except FaceSearchError as error:  # the whole stream refused: its photos are retried next run
            for photo in chunk:
                self._answered(photo.key, "failed", None, f"{error.code.name}: {error.message}")

    def _answered(self, key: str, status: str, result, message: str = "") -> None:
        faces = result.faces_stored if result is not None else 0
        self.journal.record(
            key,
            status,
            faces,
            result.content_hash if result is not None else "",
            message or getattr(result, "message", ""),
        )
        with self.progress.lock:
            self.progress.statuses[status] += 1
            self.progress.faces += faces
        self.on_progress(self.progress)
